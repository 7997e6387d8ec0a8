// Validation of sampling weights, shared by the CPU kernels of sum_tree.cpp and alias_table.cpp.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace is_kernels {

// The largest leaf of a sum tree of `capacity` leaves whose float64 sums cannot overflow: any
// finite float32, and float64 max / (2 capacity) for float64 leaves.
template <typename T>
T max_leaf(int64_t capacity) {
  if constexpr (std::is_same_v<T, double>) {
    return std::numeric_limits<double>::max() / (2.0 * static_cast<double>(capacity));
  }
  return std::numeric_limits<T>::max();
}

// Throws unless every w[i] is finite, >= 0 and <= limit; the error names `name` and the first
// offender.
template <typename T>
void check_weights(const char* op, const char* name, const T* w, int64_t n,
                   T limit = std::numeric_limits<T>::max()) {
  int64_t bad = n;
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    // A vectorisable pass over blocks; only a block that fails is scanned for its offender.
    constexpr int64_t kBlock = 1024;
    for (int64_t b = begin; b < end; b += kBlock) {
      const int64_t e = std::min(end, b + kBlock);
      bool ok = true;
      for (int64_t i = b; i < e; ++i) {
        ok &= (w[i] >= T(0)) & (w[i] <= limit);
      }
      if (ok) continue;
      int64_t i = b;
      while (w[i] >= T(0) && w[i] <= limit) ++i;
#pragma omp critical(is_kernels_check_weights)
      bad = std::min(bad, i);
      break;
    }
  });
  TORCH_CHECK(bad == n || !(w[bad] > limit && w[bad] <= std::numeric_limits<T>::max()), op,
              ": ", name, "[", bad, "] = ", w[bad], " is too large: at most ", limit,
              " (float64 max / (2 * capacity)), so that the sums cannot overflow");
  TORCH_CHECK(bad == n, op, ": ", name, "[", bad, "] = ", w[bad],
              " is not a valid weight (weights must be finite and >= 0)");
}

}  // namespace is_kernels
