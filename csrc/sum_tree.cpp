// Sum tree ops (schemas + CPU kernels): build, batched update and i.i.d. sampling of leaf
// indices with probability proportional to the leaf weights (ALGORITHMS.md section 5).
// The CUDA kernels of the same ops are Triton: is_kernels/sum_tree_triton.py.
//
// Layout: P = max(2, next power of two >= capacity) heap slots. `inner` (float64, [P]) holds
// the internal nodes at heap positions 1..P-1 (root 1, children of x at 2x and 2x+1; slot 0
// is unused). Leaf j sits at heap position P + j and its weight is leaves[j] (leaf dtype,
// [capacity]); positions P + j with j >= capacity are padding of weight 0.
// Every internal node is always fl64(left child + right child) of its current children (no
// delta propagation), so sums cannot drift and a node is > 0 iff its subtree holds a leaf
// of weight > 0. The descent only ever enters children of sum > 0, which is why a leaf of
// weight 0 is never returned, whatever the rounding of u * total.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "weights.h"

namespace is_kernels {
namespace {

// Heap slots of a tree of `capacity` leaves: max(2, next power of two >= capacity).
int64_t heap_size(int64_t capacity) {
  int64_t p = 2;
  while (p < capacity) p <<= 1;
  return p;
}

int log2_exact(int64_t p) {
  int h = 0;
  while ((int64_t{1} << h) < p) ++h;
  return h;
}

void check_leaves(const char* op, const at::Tensor& leaves) {
  TORCH_CHECK(leaves.dim() == 1 && leaves.numel() >= 1, op,
              ": leaves must be a non-empty 1-D tensor, got shape ", leaves.sizes());
  TORCH_CHECK(leaves.scalar_type() == at::kFloat || leaves.scalar_type() == at::kDouble, op,
              ": leaves must be float32 or float64, got ", leaves.scalar_type());
  TORCH_CHECK(leaves.is_contiguous(), op, ": leaves must be contiguous");
}

void check_tree(const char* op, const at::Tensor& leaves, const at::Tensor& inner) {
  check_leaves(op, leaves);
  const int64_t p = heap_size(leaves.numel());
  TORCH_CHECK(inner.dim() == 1 && inner.numel() == p, op, ": inner must have shape [", p,
              "] for ", leaves.numel(), " leaves, got ", inner.sizes());
  TORCH_CHECK(inner.scalar_type() == at::kDouble, op, ": inner must be float64, got ",
              inner.scalar_type());
  TORCH_CHECK(inner.is_contiguous(), op, ": inner must be contiguous");
  TORCH_CHECK(inner.device() == leaves.device(), op,
              ": inner and leaves must be on the same device, got ", inner.device(), " and ",
              leaves.device());
}

// Sum of the two children of inner node x (children are leaves when 2x >= P).
template <typename T>
inline double children_sum(const double* inner, const T* leaves, int64_t p, int64_t capacity,
                           int64_t x) {
  const int64_t c = 2 * x;
  if (c < p) return inner[c] + inner[c + 1];
  const int64_t j = c - p;
  const double left = j < capacity ? static_cast<double>(leaves[j]) : 0.0;
  const double right = j + 1 < capacity ? static_cast<double>(leaves[j + 1]) : 0.0;
  return left + right;
}

// Recomputes every inner node, bottom-up, level by level.
template <typename T>
void rebuild_all(double* inner, const T* leaves, int64_t p, int64_t capacity) {
  for (int64_t width = p / 2; width >= 1; width /= 2) {
    at::parallel_for(width, 2 * width, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t x = begin; x < end; ++x) inner[x] = children_sum(inner, leaves, p, capacity, x);
    });
  }
  inner[0] = 0.0;
}

at::Tensor sum_tree_build_cpu(const at::Tensor& leaves) {
  const char* op = "sum_tree_build";
  check_leaves(op, leaves);
  const int64_t capacity = leaves.numel(), p = heap_size(capacity);
  at::Tensor inner = at::empty({p}, leaves.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(leaves.scalar_type(), "sum_tree", [&] {
    check_weights(op, "leaves", leaves.data_ptr<scalar_t>(), capacity);
    rebuild_all(inner.data_ptr<double>(), leaves.data_ptr<scalar_t>(), p, capacity);
  });
  return inner;
}

void sum_tree_update_cpu(at::Tensor& leaves, at::Tensor& inner, const at::Tensor& indices,
                         const at::Tensor& values) {
  const char* op = "sum_tree_update";
  check_tree(op, leaves, inner);
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": indices must be int64, got ",
              indices.scalar_type());
  TORCH_CHECK(indices.dim() == 1, op, ": indices must be 1-D, got shape ", indices.sizes());
  TORCH_CHECK(values.scalar_type() == leaves.scalar_type(), op,
              ": values must have the dtype of the tree (", leaves.scalar_type(), "), got ",
              values.scalar_type());
  TORCH_CHECK(values.sizes() == indices.sizes(), op, ": values must have the shape of indices ",
              indices.sizes(), ", got ", values.sizes());
  TORCH_CHECK(indices.device() == leaves.device() && values.device() == leaves.device(), op,
              ": indices and values must be on the tree's device ", leaves.device(), ", got ",
              indices.device(), " and ", values.device());
  const at::Tensor idx_t = indices.contiguous(), val_t = values.contiguous();
  const int64_t k = idx_t.numel(), capacity = leaves.numel(), p = heap_size(capacity);
  const int h = log2_exact(p);
  const int64_t* idx = idx_t.data_ptr<int64_t>();
  for (int64_t t = 0; t < k; ++t) {
    TORCH_CHECK(idx[t] >= 0 && idx[t] < capacity, op, ": indices[", t, "] = ", idx[t],
                " is out of range for a tree of capacity ", capacity);
  }
  AT_DISPATCH_FLOATING_TYPES(leaves.scalar_type(), "sum_tree", [&] {
    const scalar_t* val = val_t.data_ptr<scalar_t>();
    check_weights(op, "values", val, k);
    // Everything is valid: mutate. In order, so that the last of duplicated indices wins.
    scalar_t* lv = leaves.data_ptr<scalar_t>();
    double* in = inner.data_ptr<double>();
    for (int64_t t = 0; t < k; ++t) lv[idx[t]] = val[t];
    // Level by level, bottom-up: a level no wider than k is recomputed whole (contiguous,
    // no duplicates); a wider one only at the k ancestors (a duplicated ancestor is
    // recomputed twice from the same, already final, children: same value).
    for (int d = h - 1; d >= 0; --d) {
      const int64_t width = int64_t{1} << d;
      if (width <= k) {
        at::parallel_for(width, 2 * width, 1 << 14, [&](int64_t begin, int64_t end) {
          for (int64_t x = begin; x < end; ++x) in[x] = children_sum(in, lv, p, capacity, x);
        });
      } else {
        const int shift = h - d;
        for (int64_t t = 0; t < k; ++t) {
          const int64_t x = (idx[t] + p) >> shift;
          in[x] = children_sum(in, lv, p, capacity, x);
        }
      }
    }
  });
}

// Draws per group: their descents are interleaved so that their (independent) cache misses
// overlap; each draw prefetches the nodes it reads next while the others compute.
constexpr int kGroup = 16;
// Levels descended per step: the 2^kStride descendants of node x at depth d + kStride sit at
// heap positions (x << kStride) + [0, 2^kStride), contiguous (two cache lines of float64).
constexpr int kStride = 3;

// One step of the descents of a group of n <= kGroup draws: each goes down S <= kStride
// levels, from its node x[g] (depth d) to a node at depth d + S, by the binary rule (go right
// iff the right child has weight and r >= left; a child of sum 0 is never entered). Only the
// 2^S nodes at depth d + S are read (inner nodes, or the leaves when d + S == h); the sums of
// the levels in between are recomputed from them with the additions that built them (every
// inner node is fl64(left + right) of its children), so they equal the stored nodes bit for
// bit and the walk is exactly the level-by-level descent, with one memory access instead of
// S. The draws advance one level at a time together, so their dependency chains overlap.
template <int S, typename T>
void descend_step(const double* inner, const T* leaves, int64_t p, int64_t capacity,
                  bool to_leaves, int64_t* x, double* r, int n) {
  constexpr int width = 1 << S;
  double m[kGroup][2 * width];  // implicit heap of the subtree of x[g]: m[g][width + t]
  for (int g = 0; g < n; ++g) {
    const int64_t first = x[g] << S;  // heap position of the first node at depth d + S
    if (!to_leaves) {
      for (int t = 0; t < width; ++t) m[g][width + t] = inner[first + t];
    } else {
      const int64_t j = first - p;  // leaves of the padding (j >= capacity) weigh 0
      for (int t = 0; t < width; ++t) {
        m[g][width + t] = j + t < capacity ? static_cast<double>(leaves[j + t]) : 0.0;
      }
    }
    for (int y = width - 1; y >= 2; --y) m[g][y] = m[g][2 * y] + m[g][2 * y + 1];
  }
  int y[kGroup];
  for (int g = 0; g < n; ++g) y[g] = 1;
  for (int k = 0; k < S; ++k) {
    for (int g = 0; g < n; ++g) {
      const double left = m[g][2 * y[g]], right = m[g][2 * y[g] + 1];
      const bool go_right = (right > 0.0) & (r[g] >= left);  // branch-free
      r[g] -= go_right ? left : 0.0;
      y[g] = 2 * y[g] + static_cast<int>(go_right);
    }
  }
  for (int g = 0; g < n; ++g) x[g] = (x[g] << S) + (y[g] - width);
}

// Descends the draws at positions pos[0..n) (n <= kGroup) of u into out. After every step,
// each draw prefetches the nodes of its next step, which arrive while the others compute.
template <typename T>
void descend(const double* inner, const T* leaves, int64_t p, int64_t capacity, int h,
             double total, const double* u, const int32_t* pos, int64_t* out, int n) {
  int64_t x[kGroup];
  double r[kGroup];
  for (int g = 0; g < n; ++g) {
    x[g] = 1;
    r[g] = u[pos[g]] * total;
  }
  for (int d = 0; d < h; d += kStride) {
    const int s = std::min(kStride, h - d);
    const bool to_leaves = d + s == h;
    switch (s) {
      case 1: descend_step<1>(inner, leaves, p, capacity, to_leaves, x, r, n); break;
      case 2: descend_step<2>(inner, leaves, p, capacity, to_leaves, x, r, n); break;
      default: descend_step<kStride>(inner, leaves, p, capacity, to_leaves, x, r, n);
    }
    const int next = std::min(kStride, h - d - s);
    for (int g = 0; g < n && next > 0; ++g) {
      if (d + s + next < h) {
        __builtin_prefetch(inner + (x[g] << next));
      } else {
        __builtin_prefetch(leaves + ((x[g] << next) - p));
      }
    }
  }
  for (int g = 0; g < n; ++g) out[pos[g]] = x[g] - p;
}

// The positions [begin, end) of u, ordered by their top bits (a counting sort): consecutive
// descents then share their upper paths and walk the deep levels in address order (fewer
// cache and TLB misses). Each draw still uses its own u and writes its own output slot, so
// the result is the same as in the original order.
std::vector<int32_t> order_by_value(const double* u, int64_t begin, int64_t end) {
  const int64_t n = end - begin;
  int bits = 1;
  while (bits < 16 && (int64_t{1} << bits) < n) ++bits;
  const int64_t buckets = int64_t{1} << bits;
  std::vector<int32_t> start(buckets + 1, 0), order(n);
  const auto bucket = [&](int64_t i) {
    return std::min(static_cast<int64_t>(u[i] * static_cast<double>(buckets)), buckets - 1);
  };
  for (int64_t i = begin; i < end; ++i) ++start[bucket(i) + 1];
  for (int64_t b = 0; b < buckets; ++b) start[b + 1] += start[b];
  for (int64_t i = begin; i < end; ++i) order[start[bucket(i)]++] = static_cast<int32_t>(i);
  return order;
}

// Returns the leaf of every u (-1 for all when the total is 0: nothing can be drawn).
at::Tensor sum_tree_sample_cpu(const at::Tensor& leaves, const at::Tensor& inner,
                               const at::Tensor& u) {
  const char* op = "sum_tree_sample";
  check_tree(op, leaves, inner);
  TORCH_CHECK(u.scalar_type() == at::kDouble, op, ": u must be float64, got ", u.scalar_type());
  TORCH_CHECK(u.dim() == 1, op, ": u must be 1-D, got shape ", u.sizes());
  TORCH_CHECK(u.device() == leaves.device(), op, ": u must be on the tree's device ",
              leaves.device(), ", got ", u.device());
  TORCH_CHECK(u.numel() <= std::numeric_limits<int32_t>::max(), op,
              ": at most 2^31 - 1 draws per call, got ", u.numel());
  const at::Tensor uc = u.contiguous();
  const int64_t n = uc.numel(), capacity = leaves.numel(), p = heap_size(capacity);
  const double* up = uc.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(up[i] >= 0.0 && up[i] < 1.0, op, ": u[", i, "] = ", up[i],
                " is not in [0, 1)");
  }
  const double* in = inner.data_ptr<double>();
  const double total = in[1];
  if (!(total > 0.0)) return at::full({n}, -1, leaves.options().dtype(at::kLong));
  at::Tensor out = at::empty({n}, leaves.options().dtype(at::kLong));
  int64_t* op_out = out.data_ptr<int64_t>();
  const int h = log2_exact(p);
  AT_DISPATCH_FLOATING_TYPES(leaves.scalar_type(), "sum_tree", [&] {
    const scalar_t* lv = leaves.data_ptr<scalar_t>();
    // One thread below 16384 draws: a fork-join costs more than it saves on a busy machine.
    at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
      const std::vector<int32_t> order = order_by_value(up, begin, end);
      for (int64_t i = 0; i < end - begin; i += kGroup) {
        descend(in, lv, p, capacity, h, total, up, order.data() + i, op_out,
                static_cast<int>(std::min<int64_t>(kGroup, end - begin - i)));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(is_kernels, m) {
  m.def("sum_tree_build(Tensor leaves) -> Tensor");
  m.def(
      "sum_tree_update(Tensor(a!) leaves, Tensor(b!) inner, Tensor indices, Tensor values) "
      "-> ()");
  m.def("sum_tree_sample(Tensor leaves, Tensor inner, Tensor u) -> Tensor");
}

TORCH_LIBRARY_IMPL(is_kernels, CPU, m) {
  m.impl("sum_tree_build", &sum_tree_build_cpu);
  m.impl("sum_tree_update", &sum_tree_update_cpu);
  m.impl("sum_tree_sample", &sum_tree_sample_cpu);
}

}  // namespace is_kernels
