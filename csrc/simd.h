// The SIMD helpers of the CPU kernels of csrc/, in two kinds:
// - Vec<T> (at::vec::Vectorized): as wide as the build's CPU capability allows, for passes over
//   a row whose width does not change the result (the row passes of vec_row.h);
// - F64x4 / I64x4: exactly 4 lanes of float64 / int64 (GCC/Clang vector extensions: one AVX2
//   register with -march=native, narrower registers or scalar code elsewhere), for algorithms
//   whose result depends on the grouping of 4 (the alias table's keys, the sum tree's descent
//   of 4 draws at a time). The arithmetic operators are the extensions' own; the operations
//   below that they lack are AVX2 intrinsics, with portable fallbacks that give the same lanes.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <cstring>

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace is_kernels {

// ---- Vec<T> ---------------------------------------------------------------------------------

template <typename T>
using Vec = at::vec::Vectorized<T>;

// exp(x) for x <= 0, -inf or NaN (softmax exponents z_j - max z): float32 to a few ulp (-inf,
// and x below about -87.7, give 0; NaN gives NaN), float64 exact.
template <typename T>
Vec<T> exp_nonpositive(const Vec<T>& x) {
  return x.exp_u20();  // float: ~20 ulp, double: exact exp
}

#if defined(CPU_CAPABILITY_AVX2)
// exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2]; exp(r) is a
// degree-5 polynomial (a relative least-squares fit; max relative error 4e-7 over [-87, 0]).
// Fewer instructions than exp_u20, which also serves x > 0: x is raised to -100 so that n
// fits, and 2^n is n + 127 shifted into the exponent bits, raised to 0 (2^n -> 0) below -126.
template <>
inline Vec<float> exp_nonpositive(const Vec<float>& x_in) {
  const __m256 x = _mm256_max_ps(_mm256_set1_ps(-100.f), x_in);  // max(c, NaN) is NaN
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693147181f), x);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(0.00841856f), r, _mm256_set1_ps(0.0418891f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.166665f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.499999f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  __m256i bits = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  bits = _mm256_slli_epi32(_mm256_max_epi32(bits, _mm256_setzero_si256()), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

// ---- F64x4 / I64x4 --------------------------------------------------------------------------

// Built without AVX, GCC warns that an F64x4 argument or result changes the ABI. No F64x4
// crosses a library boundary (these functions and their callers in csrc/ are inline or
// internal), so the warning is off for the rest of each file that includes this header.
#pragma GCC diagnostic ignored "-Wpsabi"

typedef double F64x4 __attribute__((vector_size(4 * sizeof(double))));
typedef int64_t I64x4 __attribute__((vector_size(4 * sizeof(int64_t))));

inline F64x4 broadcast(double x) { return F64x4{x, x, x, x}; }
inline F64x4 load4(const double* x) {
  F64x4 a;
  std::memcpy(&a, x, sizeof a);
  return a;
}
inline void store4(double* x, F64x4 a) { std::memcpy(x, &a, sizeof a); }

#ifdef __AVX2__
inline F64x4 max0(F64x4 a) { return _mm256_max_pd(a, _mm256_setzero_pd()); }  // a > 0 ? a : 0
inline F64x4 min(F64x4 a, F64x4 b) { return _mm256_min_pd(a, b); }           // a < b ? a : b
inline F64x4 lane3(F64x4 a) { return _mm256_permute4x64_pd(a, 0xFF); }  // in every lane
inline int above_one(F64x4 a) {  // bit j: a_j > 1
  return _mm256_movemask_pd(_mm256_cmp_pd(a, _mm256_set1_pd(1.0), _CMP_GT_OQ));
}
inline F64x4 load_values(const float* w) { return _mm256_cvtps_pd(_mm_loadu_ps(w)); }
inline F64x4 load_values(const double* w) { return _mm256_loadu_pd(w); }
inline F64x4 load_strided(const float* x, int64_t stride) {  // x[0], x[stride], ...
  return _mm256_cvtps_pd(_mm_set_ps(x[3 * stride], x[2 * stride], x[stride], x[0]));
}
inline F64x4 load_strided(const double* x, int64_t stride) {
  return _mm256_set_pd(x[3 * stride], x[2 * stride], x[stride], x[0]);
}
inline F64x4 pair_shift(F64x4 a) {  // 0, a0, 0, a2
  return _mm256_shuffle_pd(_mm256_setzero_pd(), a, 0);
}
inline F64x4 low_pair_last(F64x4 a) {  // 0, 0, a1, a1
  return _mm256_permute_pd(_mm256_permute2f128_pd(a, a, 0x08), 0xF);
}

// Per 4-bit mask, the lane permutation that moves the lanes set in it to the front.
struct CompactTable {
  int32_t halves[16][8];  // as 32-bit halves of 64-bit lanes
  int32_t lanes[16][4];
};
constexpr CompactTable make_compact_table() {
  CompactTable t{};
  for (int m = 0; m < 16; ++m) {
    int k = 0;
    for (int j = 0; j < 4; ++j) {
      if (m >> j & 1) {
        t.halves[m][2 * k] = 2 * j;
        t.halves[m][2 * k + 1] = 2 * j + 1;
        t.lanes[m][k++] = j;
      }
    }
  }
  return t;
}
alignas(32) static constexpr CompactTable kCompact = make_compact_table();

// Writes the lanes of `a` set in `keep`, with their indices first + lane, to val and idx from
// pos on (and up to 4 entries of garbage past them); returns the new end.
inline int64_t compact(F64x4 a, int keep, int64_t first, double* val, int32_t* idx,
                       int64_t pos) {
  const __m256i halves = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompact.halves[keep]));
  const __m128i lanes = _mm_load_si128(reinterpret_cast<const __m128i*>(kCompact.lanes[keep]));
  _mm256_storeu_pd(val + pos, _mm256_castsi256_pd(_mm256_permutevar8x32_epi32(
                                  _mm256_castpd_si256(a), halves)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(idx + pos),
                   _mm_add_epi32(_mm_set1_epi32(static_cast<int32_t>(first)), lanes));
  return pos + __builtin_popcount(keep);
}
#else
inline F64x4 max0(F64x4 a) { return a > 0.0 ? a : broadcast(0.0); }
inline F64x4 min(F64x4 a, F64x4 b) { return a < b ? a : b; }
inline F64x4 lane3(F64x4 a) { return broadcast(a[3]); }
inline int above_one(F64x4 a) {
  return (a[0] > 1.0) | (a[1] > 1.0) << 1 | (a[2] > 1.0) << 2 | (a[3] > 1.0) << 3;
}
template <typename T>
inline F64x4 load_values(const T* w) {
  return F64x4{static_cast<double>(w[0]), static_cast<double>(w[1]),
               static_cast<double>(w[2]), static_cast<double>(w[3])};
}
template <typename T>
inline F64x4 load_strided(const T* x, int64_t stride) {
  return F64x4{static_cast<double>(x[0]), static_cast<double>(x[stride]),
               static_cast<double>(x[2 * stride]), static_cast<double>(x[3 * stride])};
}
inline F64x4 pair_shift(F64x4 a) { return F64x4{0.0, a[0], 0.0, a[2]}; }
inline F64x4 low_pair_last(F64x4 a) { return F64x4{0.0, 0.0, a[1], a[1]}; }
inline int64_t compact(F64x4 a, int keep, int64_t first, double* val, int32_t* idx,
                       int64_t pos) {
  for (int j = 0; j < 4; ++j) {
    if (keep >> j & 1) {
      val[pos] = a[j];
      idx[pos++] = static_cast<int32_t>(first + j);
    }
  }
  return pos;
}
#endif

inline double lane0(F64x4 a) { return a[0]; }

}  // namespace is_kernels
