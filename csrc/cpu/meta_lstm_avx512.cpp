#define LO_CAPABILITY avx512
#include "cpu/capability_variant.h"
#include "cpu/meta_lstm_kernel.h"
