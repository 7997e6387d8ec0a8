// Sum tree ops (schemas + CPU kernels): build, batched update and i.i.d. sampling of leaf
// indices with probability proportional to the leaf weights
// (docs/algorithms.md, "Weighted sampling").
// The CUDA kernels of the same ops are Triton: is_kernels/ops/sum_tree_triton.py.
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
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

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
    check_weights(op, "leaves", leaves.data_ptr<scalar_t>(), capacity,
                  max_leaf<scalar_t>(capacity));
    rebuild_all(inner.data_ptr<double>(), leaves.data_ptr<scalar_t>(), p, capacity);
  });
  return inner;
}

// Prefetch distance (in batch entries) of the update's scattered writes.
constexpr int64_t kUpdatePrefetch = 16;
// An update of k leaves recomputes the inner levels at most kDenseLevel * k wide whole.
// Tuned at k = 4096, N = 2^20 (of 1, 4 and 8, 4 was the fastest).
constexpr int64_t kDenseLevel = 4;

// Recomputes the inner nodes [begin, end) of one level from their children, which are inner
// nodes (not the last inner level): contiguous and vectorisable.
inline void sum_inner_children(double* inner, int64_t begin, int64_t end) {
  double* __restrict__ node = inner + begin;
  const double* __restrict__ child = inner + 2 * begin;  // [2 begin, 2 end): disjoint
  for (int64_t i = 0; i < end - begin; ++i) node[i] = child[2 * i] + child[2 * i + 1];
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
    check_weights(op, "values", val, k, max_leaf<scalar_t>(capacity));
    // Everything is valid: mutate.
    scalar_t* lv = leaves.data_ptr<scalar_t>();
    double* in = inner.data_ptr<double>();
    // Leaves in batch order, each followed by its parent: the last of duplicated indices wins,
    // and the last write below a parent recomputes it from both final leaves. The scattered
    // accesses miss the caches: each entry prefetches (for writing) those of the
    // kUpdatePrefetch-th next one, so that their misses overlap.
    const auto parent = [&](int64_t t) { return (idx[t] + p) >> 1; };
    for (int64_t t = 0; t < k; ++t) {
      if (t + kUpdatePrefetch < k) {
        __builtin_prefetch(lv + idx[t + kUpdatePrefetch], 1);
        __builtin_prefetch(in + parent(t + kUpdatePrefetch), 1);
      }
      lv[idx[t]] = val[t];
      in[parent(t)] = children_sum(in, lv, p, capacity, parent(t));
    }
    // The levels above, bottom-up: a level at most kDenseLevel * k wide is recomputed whole
    // (contiguous and vectorised: cheaper than k scattered nodes), a wider one only at the k
    // ancestors (a duplicated ancestor is recomputed twice from the same, already final,
    // children: same value).
    for (int d = h - 2; d >= 0; --d) {
      const int64_t width = int64_t{1} << d;
      if (width <= kDenseLevel * k) {
        at::parallel_for(width, 2 * width, 1 << 14, [&](int64_t begin, int64_t end) {
          sum_inner_children(in, begin, end);
        });
      } else {
        const int shift = h - d;
        const auto ancestor = [&](int64_t t) { return (idx[t] + p) >> shift; };
        for (int64_t t = 0; t < k; ++t) {
          if (t + kUpdatePrefetch < k) __builtin_prefetch(in + ancestor(t + kUpdatePrefetch), 1);
          const int64_t x = ancestor(t);
          in[x] = in[2 * x] + in[2 * x + 1];
        }
      }
    }
  });
}

// ---- sampling: the binary descent, kLanes draws per SIMD vector, a chunk of draws per pass ----

// Draws descend kLanes at a time, one per lane of a vector of float64 (GCC/Clang vector
// extensions: AVX2 registers with -march=native, narrower registers or scalar code elsewhere).
constexpr int kLanes = 4;
typedef double Doubles __attribute__((vector_size(kLanes * sizeof(double))));
typedef int64_t Longs __attribute__((vector_size(kLanes * sizeof(int64_t))));

// Draws descending together: each step of the descent is one pass over the whole chunk, so
// that every draw's next memory access can be prefetched a whole pass ahead of its use.
// 512 draws keep the positions and remainders (8 KiB) in L1.
constexpr int64_t kChunk = 512;
// Levels per step below the top of the tree (see Plan).
constexpr int kBlock = 3;
// Depth down to which the descent reads every level: the 2^15 nodes above it (256 KiB) stay
// in L2 between calls. Below it the stored nodes miss the caches, and a step reads one cache
// line per kBlock levels. Tuned at N = 2^20 and 2^24 on a Zen3 with 512 KiB of L2.
constexpr int kCachedDepth = 14;

template <typename T>
struct TreeView {
  const double* inner;
  const T* leaves;
  int64_t p, capacity;

  // Weight of the node at heap position y: an inner node or a leaf (0 for the padding).
  template <bool kLeaf>
  double node(int64_t y) const {
    if (!kLeaf) return inner[y];
    const int64_t j = y - p;
    return j < capacity ? static_cast<double>(leaves[j]) : 0.0;
  }

  // Lane l of v: the weight of the node at heap position y[l] + t. The vector is built whole
  // from its lanes: filled lane by lane, GCC merged the loads into the register of an earlier
  // vector, chaining each group of draws to the previous one (a step took twice as long).
  // v is an output argument: a vector returned by value changes the ABI without AVX.
  template <bool kLeaf, size_t... lanes>
  void gather(const int64_t* y, int t, Doubles& v, std::index_sequence<lanes...>) const {
    v = Doubles{node<kLeaf>(y[lanes] + t)...};
  }

  template <bool kLeaf>
  void prefetch(int64_t y) const {
    if (kLeaf) {
      __builtin_prefetch(leaves + (y - p));
    } else {
      __builtin_prefetch(inner + y);
    }
  }
};

// Moves the kLanes draws at x[0..kLanes), r[0..kLanes) (node at depth d, remainder) down S
// levels by the binary rule: go right iff the right child's sum is > 0 and r >= the left
// sum, and then r -= left sum. It reads only the 2^S nodes at depth d + S below each node
// (leaves if kLeaf); the sums in between are recomputed from them with the additions that
// built them (every inner node is fl64(left + right) of its children), so they equal the
// stored nodes bit for bit and the walk is exactly the level-by-level descent.
template <int S, bool kLeaf, typename T>
inline void descend_lanes(const TreeView<T>& tree, int64_t* x, double* r) {
  constexpr int width = 1 << S;
  int64_t first[kLanes];  // heap position of the first node at depth d + S below each node
  for (int l = 0; l < kLanes; ++l) first[l] = x[l] << S;
  Doubles m[2 * width];  // per lane, the implicit heap of the node's subtree: m[1] is the node
  for (int t = 0; t < width; ++t) {
    tree.template gather<kLeaf>(first, t, m[width + t], std::make_index_sequence<kLanes>());
  }
  for (int y = width - 1; y >= 2; --y) m[y] = m[2 * y] + m[2 * y + 1];
  // The candidates at depth d + k are m[2^k, 2^(k+1)). After each decision, every deeper
  // depth keeps only the half below the chosen child (a per-lane select), so the children
  // to compare next are always m[2^k], m[2^k + 1].
  Doubles rv;
  std::memcpy(&rv, r, sizeof rv);
  Longs offset = {};
  for (int k = 1; k <= S; ++k) {
    const Doubles left = m[1 << k], right = m[(1 << k) + 1];
    const Longs go_right = (right > 0.0) & (rv >= left);  // lanes: all ones (-1) or 0
    rv -= (Doubles)((Longs)left & go_right);  // r - left, or r - (+0.0), which is r
    offset = 2 * offset - go_right;
    for (int depth = k + 1; depth <= S; ++depth) {
      const int half = 1 << (depth - k);
      Doubles* level = m + (1 << depth);
      for (int t = 0; t < half; ++t) level[t] = go_right ? level[half + t] : level[t];
    }
  }
  std::memcpy(r, &rv, sizeof rv);
  Longs xv;
  std::memcpy(&xv, x, sizeof xv);
  xv = (xv << S) + offset;
  std::memcpy(x, &xv, sizeof xv);
}

// The steps of a descent of height h: `plain` one-level steps from the root (their nodes stay
// in cache), then `blocks` steps of kBlock levels (one cache line of 2^kBlock inner nodes,
// or 2^kBlock leaves, instead of kBlock lines); the last step reads the leaves.
struct Plan {
  int plain, blocks;  // plain + kBlock * blocks == h
};

Plan plan_of(int h) {
  const int blocks = (std::max(0, h - kCachedDepth) + kBlock - 1) / kBlock;
  return {h - kBlock * blocks, blocks};
}

// One step (S levels, onto the leaves if kLeaf) of the n draws of a chunk (x, r; n a multiple
// of kLanes). If kNextS > 0, each draw then prefetches what its next step (kNextS levels,
// onto the leaves if kNextLeaf) reads: the accesses that miss the caches overlap.
template <int S, bool kLeaf, int kNextS, bool kNextLeaf, typename T>
void step_chunk(const TreeView<T>& tree, int64_t* x, double* r, int64_t n) {
  for (int64_t i = 0; i < n; i += kLanes) {
    descend_lanes<S, kLeaf>(tree, x + i, r + i);
    if (kNextS > 0) {
      for (int l = 0; l < kLanes; ++l) tree.template prefetch<kNextLeaf>(x[i + l] << kNextS);
    }
  }
}

// Descends the n draws of a chunk from the root (x = 1) to their leaves (heap positions),
// by the steps of `plan`; the step before each block prefetches for it.
template <typename T>
void descend_chunk(const TreeView<T>& tree, const Plan& plan, int64_t* x, double* r,
                   int64_t n) {
  for (int s = 1; s < plan.plain; ++s) step_chunk<1, false, 0, false>(tree, x, r, n);
  if (plan.blocks == 0) {
    step_chunk<1, true, 0, false>(tree, x, r, n);
    return;
  }
  if (plan.blocks == 1) {
    step_chunk<1, false, kBlock, true>(tree, x, r, n);
  } else {
    step_chunk<1, false, kBlock, false>(tree, x, r, n);
    for (int b = 2; b < plan.blocks; ++b) step_chunk<kBlock, false, kBlock, false>(tree, x, r, n);
    step_chunk<kBlock, false, kBlock, true>(tree, x, r, n);
  }
  step_chunk<kBlock, true, 0, false>(tree, x, r, n);
}

// Draws the leaves of u[begin, end) into out, kChunk draws at a time. A chunk is rounded up
// to whole vectors with padding draws (r = 0: a valid descent) whose leaves are not written.
// Returns the first drawn leaf that is padding or of weight 0, or -1 if none: a consistent
// tree never draws one, inner nodes that do not match the leaves can.
template <typename T>
int64_t sample_range(const TreeView<T>& tree, const Plan& plan, double total, const double* u,
                     int64_t begin, int64_t end, int64_t* out) {
  alignas(64) int64_t x[kChunk];
  alignas(64) double r[kChunk];
  for (int64_t c = begin; c < end; c += kChunk) {
    const int64_t n = std::min(kChunk, end - c);
    const int64_t lanes = (n + kLanes - 1) / kLanes * kLanes;
    for (int64_t i = 0; i < lanes; ++i) {
      x[i] = 1;
      r[i] = i < n ? u[c + i] * total : 0.0;
    }
    descend_chunk(tree, plan, x, r, lanes);
    bool ok = true;  // the leaf's line was read by the last step: this costs no miss
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = x[i] - tree.p;
      out[c + i] = j;
      ok &= tree.template node<true>(x[i]) > 0.0;  // 0 for the padding j >= capacity
    }
    for (int64_t i = 0; !ok && i < n; ++i) {
      if (!(tree.template node<true>(x[i]) > 0.0)) return x[i] - tree.p;
    }
  }
  return -1;
}

// Throws unless every u[i] is in [0, 1); the error names the first offender.
void check_uniforms(const char* op, const double* u, int64_t n) {
  bool ok = true;  // a vectorisable pass; the offender is looked for only on failure
  for (int64_t i = 0; i < n; ++i) ok &= (u[i] >= 0.0) & (u[i] < 1.0);
  for (int64_t i = 0; !ok && i < n; ++i) {
    TORCH_CHECK(u[i] >= 0.0 && u[i] < 1.0, op, ": u[", i, "] = ", u[i], " is not in [0, 1)");
  }
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
  check_uniforms(op, up, n);
  const double* in = inner.data_ptr<double>();
  const double total = in[1];
  if (!(total > 0.0)) return at::full({n}, -1, leaves.options().dtype(at::kLong));
  at::Tensor out = at::empty({n}, leaves.options().dtype(at::kLong));
  int64_t* op_out = out.data_ptr<int64_t>();
  const Plan plan = plan_of(log2_exact(p));
  std::atomic<int64_t> bad_leaf{-1};
  AT_DISPATCH_FLOATING_TYPES(leaves.scalar_type(), "sum_tree", [&] {
    const TreeView<scalar_t> tree{in, leaves.data_ptr<scalar_t>(), p, capacity};
    // One thread below 16384 draws: a fork-join costs more than it saves on a busy machine.
    at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
      const int64_t j = sample_range(tree, plan, total, up, begin, end, op_out);
      if (j >= 0) bad_leaf = j;
    });
  });
  TORCH_CHECK_VALUE(bad_leaf < 0, op, ": inner does not match leaves (a descent reached leaf ",
                    bad_leaf.load(), ", which is ",
                    bad_leaf >= capacity ? "padding" : "of weight 0", ", of ", capacity,
                    " leaves); build inner with sum_tree_build and change it only through "
                    "sum_tree_update");
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
