// Vectorised passes over one contiguous row, shared by the CPU kernels of csrc/.
// The row passes of the cross-entropy skip the target lane y by masking the vector that holds
// it (and the row's last, partial vector), so a row has no scalar remainders but its last.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "simd.h"

namespace is_kernels {

// The W lanes of z from j on, with the lanes at or past n, and lane y if among them, set to
// `fill`.
template <typename T>
Vec<T> load_except(const T* z, int64_t j, int64_t n, int64_t y, T fill) {
  constexpr int64_t W = Vec<T>::size();
  const int64_t k = std::min(W, n - j);
  Vec<T> v = k == W ? Vec<T>::loadu(z + j)
                    : Vec<T>::set(Vec<T>(fill), Vec<T>::loadu(z + j, k), k);
  if (y >= j && y < j + W) {
    alignas(64) T lanes[W];
    v.store(lanes);
    lanes[y - j] = fill;
    v = Vec<T>::loadu(lanes);
  }
  return v;
}

// The W lanes of z from j on, for j a multiple of W below n: a plain load, but for the group
// of lane y (jy = y - y % W) and the row's last, partial group (load_except).
template <typename T>
C10_ALWAYS_INLINE Vec<T> load_lanes(const T* z, int64_t j, int64_t n, int64_t y, int64_t jy,
                                    T fill) {
  constexpr int64_t W = Vec<T>::size();
  return j == jy || j + W > n ? load_except(z, j, n, y, fill) : Vec<T>::loadu(z + j);
}

// Stores the lanes of v that fall in [j, n) to e + j.
template <typename T>
void store_upto(T* e, int64_t j, int64_t n, const Vec<T>& v) {
  const int64_t k = std::min<int64_t>(Vec<T>::size(), n - j);
  if (k == Vec<T>::size()) {
    v.store(e + j);
  } else {
    v.store(e + j, static_cast<int>(k));
  }
}

// max_{j != y} z[j] over [0, n); NaN if one of them is NaN; -inf if there is none. Four
// accumulators: each NaN-propagating maximum (several instructions) waits on the one before.
template <typename T>
T row_max_except(const T* z, int64_t n, int64_t y) {
  constexpr int64_t W = Vec<T>::size();
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const int64_t jy = y - y % W;
  Vec<T> m0(kNegInf), m1(kNegInf), m2(kNegInf), m3(kNegInf);
  int64_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {
    m0 = at::vec::maximum(m0, load_lanes(z, j, n, y, jy, kNegInf));
    m1 = at::vec::maximum(m1, load_lanes(z, j + W, n, y, jy, kNegInf));
    m2 = at::vec::maximum(m2, load_lanes(z, j + 2 * W, n, y, jy, kNegInf));
    m3 = at::vec::maximum(m3, load_lanes(z, j + 3 * W, n, y, jy, kNegInf));
  }
  for (; j < n; j += W) m0 = at::vec::maximum(m0, load_lanes(z, j, n, y, jy, kNegInf));
  return at::vec::vec_reduce_all<T>(
      [](Vec<T>& a, Vec<T>& b) { return at::vec::maximum(a, b); },
      at::vec::maximum(at::vec::maximum(m0, m1), at::vec::maximum(m2, m3)));
}

// e[j] = exp(z[j] - m) for j != y and e[y] = 0, over [0, n), where m >= max_{j != y} z[j]
// (or NaN); returns their sum in *sum and the sum of their squares in *sum_sq. If `ahead` is
// not null, prefetches ahead[0, n) on the way (a row needed soon).
template <typename T>
void exp_shifted_except(const T* z, T* e, int64_t n, int64_t y, T m, T* sum, T* sum_sq,
                        const T* ahead) {
  constexpr int64_t W = Vec<T>::size();
  const int64_t jy = y - y % W;
  const Vec<T> vm(m);
  // Plain locals (no lambda capture): the stores to e cannot alias them, so they stay in
  // registers.
  Vec<T> acc(T(0)), acc_sq(T(0));
  for (int64_t j = 0; j < n; j += W) {
    const Vec<T> x =
        exp_nonpositive(load_lanes(z, j, n, y, jy, -std::numeric_limits<T>::infinity()) - vm);
    store_upto(e, j, n, x);
    if (ahead != nullptr && (j * sizeof(T)) % 64 == 0) __builtin_prefetch(ahead + j);
    acc = acc + x;
    acc_sq = at::vec::fmadd(x, x, acc_sq);
  }
  auto add = [](Vec<T>& a, Vec<T>& b) { return a + b; };
  *sum = at::vec::vec_reduce_all<T>(add, acc);
  *sum_sq = at::vec::vec_reduce_all<T>(add, acc_sq);
}

// d[j] *= f over [0, n), in place.
template <typename T>
void scale_in_place(T* d, int64_t n, T f) {
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> vf(f);
  int64_t j = 0;
  for (; j + W <= n; j += W) (Vec<T>::loadu(d + j) * vf).store(d + j);
  if (j < n) store_upto(d, j, n, Vec<T>::loadu(d + j, static_cast<int>(n - j)) * vf);
}

// sum_j z[j] over [0, n).
template <typename T>
T row_sum(const T* z, int64_t n) {
  constexpr int64_t W = Vec<T>::size();
  Vec<T> acc(T(0));
  int64_t j = 0;
  for (; j + W <= n; j += W) acc = acc + Vec<T>::loadu(z + j);
  T s = at::vec::vec_reduce_all<T>([](Vec<T>& a, Vec<T>& b) { return a + b; }, acc);
  for (; j < n; ++j) s += z[j];
  return s;
}

// d[j] = scale * (e[j] * inv - t) over [lo, hi), in place; returns sum (e[j] * inv - t)^2.
template <typename T>
T affine_in_place(T* d, int64_t lo, int64_t hi, T inv, T t, T scale) {
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> vinv(inv), vt(t), vscale(scale);
  Vec<T> acc(T(0));
  int64_t j = lo;
  for (; j + W <= hi; j += W) {
    Vec<T> v = at::vec::fmsub(Vec<T>::loadu(d + j), vinv, vt);
    acc = at::vec::fmadd(v, v, acc);
    (v * vscale).store(d + j);
  }
  T q = at::vec::vec_reduce_all<T>([](Vec<T>& a, Vec<T>& b) { return a + b; }, acc);
  for (; j < hi; ++j) {
    T v = d[j] * inv - t;
    q += v * v;
    d[j] = v * scale;
  }
  return q;
}

}  // namespace is_kernels
