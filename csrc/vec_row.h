// Vectorised reductions over one contiguous row, shared by the CPU kernels of csrc/.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace is_kernels {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// max_j z[j] over [0, n); NaN if any element is NaN; -inf for n == 0.
template <typename T>
T row_max(const T* z, int64_t n) {
  constexpr int64_t W = Vec<T>::size();
  T m = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  if (n >= W) {
    Vec<T> vm(m);
    for (; j + W <= n; j += W) vm = at::vec::maximum(vm, Vec<T>::loadu(z + j));
    m = at::vec::vec_reduce_all<T>(
        [](Vec<T>& a, Vec<T>& b) { return at::vec::maximum(a, b); }, vm);
  }
  for (; j < n; ++j) m = (std::isnan(z[j]) || z[j] > m) ? z[j] : m;
  return m;
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

// e[j] = exp(z[j] - m) over [lo, hi); adds sum e[j] to *sum and sum e[j]^2 to *sum_sq.
template <typename T>
void exp_shifted(const T* z, T* e, int64_t lo, int64_t hi, T m, T* sum, T* sum_sq) {
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> vm(m);
  Vec<T> acc(T(0)), acc_sq(T(0));
  int64_t j = lo;
  for (; j + W <= hi; j += W) {
    Vec<T> v = (Vec<T>::loadu(z + j) - vm).exp_u20();  // float: ~20 ulp, double: exact exp
    v.store(e + j);
    acc = acc + v;
    acc_sq = at::vec::fmadd(v, v, acc_sq);
  }
  auto add = [](Vec<T>& a, Vec<T>& b) { return a + b; };
  T s = at::vec::vec_reduce_all<T>(add, acc);
  T q = at::vec::vec_reduce_all<T>(add, acc_sq);
  for (; j < hi; ++j) {
    T v = std::exp(z[j] - m);
    e[j] = v;
    s += v;
    q += v * v;
  }
  *sum += s;
  *sum_sq += q;
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
