// Included at the top of every per-capability kernel file (*_baseline/_avx2/_avx512.cpp), before
// any other header, with LO_CAPABILITY set to baseline, avx2 or avx512. It turns on the instruction
// set for the whole file and defines the SIMD width that file's kernels use:
//   LO_VEC          the float vector type (4, 8 or 16 lanes)
//   LO_KERNEL(name) name##_<capability>, the symbol under which the file exports its kernel table
#pragma once

#define LO_CAT2(a, b) a##_##b
#define LO_CAT(a, b) LO_CAT2(a, b)
#define LO_KERNEL(name) LO_CAT(name, LO_CAPABILITY)

#define LO_CAP_baseline 0
#define LO_CAP_avx2 1
#define LO_CAP_avx512 2
#define LO_CAP_VALUE(c) LO_CAT(LO_CAP, c)

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#if LO_CAP_VALUE(LO_CAPABILITY) == 2
#pragma GCC target("avx512f,avx512dq,avx512vl,avx2,fma")
#define LO_VEC ::lo::simd::f32x16
#elif LO_CAP_VALUE(LO_CAPABILITY) == 1
#pragma GCC target("avx2,fma")
#define LO_VEC ::lo::simd::f32x8
#else
#define LO_VEC ::lo::simd::f32x4
#endif
#else
#define LO_VEC ::lo::simd::f32x4
#endif
