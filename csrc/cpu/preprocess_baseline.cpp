#define LO_CAPABILITY baseline
#include "cpu/capability_variant.h"
#include "cpu/preprocess_kernel.h"
