#define LO_CAPABILITY baseline
#include "cpu/capability_variant.h"
#include "cpu/fma_peak.h"
