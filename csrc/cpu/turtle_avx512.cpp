#define LO_CAPABILITY avx512
#include "cpu/capability_variant.h"
// The MLP is chains of multiply-adds: let them fuse (ISO -std=c++17 turns GCC's contraction off).
#include "cpu/turtle_kernel.h"
