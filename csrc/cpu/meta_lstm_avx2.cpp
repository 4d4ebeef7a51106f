#define LO_CAPABILITY avx2
#include "cpu/capability_variant.h"
#include "cpu/meta_lstm_kernel.h"
