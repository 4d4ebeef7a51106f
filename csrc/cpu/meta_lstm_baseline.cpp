#define LO_CAPABILITY baseline
#include "cpu/capability_variant.h"
#include "cpu/meta_lstm_kernel.h"
