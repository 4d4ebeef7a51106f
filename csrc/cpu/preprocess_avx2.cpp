#define LO_CAPABILITY avx2
#include "cpu/capability_variant.h"
#include "cpu/preprocess_kernel.h"
