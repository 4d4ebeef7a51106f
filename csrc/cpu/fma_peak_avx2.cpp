#define LO_CAPABILITY avx2
#include "cpu/capability_variant.h"
#include "cpu/fma_peak.h"
