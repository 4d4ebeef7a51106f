#define LO_CAPABILITY avx512
#include "cpu/capability_variant.h"
#include "cpu/fma_peak.h"
