// Sum and min tree ops (schemas + CPU kernels). Sum tree: build, batched update, range sums,
// i.i.d. sampling of leaf indices with probability proportional to the leaf weights
// (docs/algorithms.md, "Weighted sampling") and the lower-bound search over prefix sums.
// Min tree: build, batched update and range minima (the normalisation of prioritized
// replay's weights, docs/replay.md).
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
//
// The min tree has the same layout, with inner nodes in the leaf dtype (a minimum is exact),
// each the minimum of its two children, and padding leaves of +inf.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/DistributionsHelper.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "overlap.h"
#include "simd.h"
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

void check_tree(const char* op, const at::Tensor& leaves, const at::Tensor& inner,
                at::ScalarType inner_dtype) {
  check_leaves(op, leaves);
  const int64_t p = heap_size(leaves.numel());
  TORCH_CHECK(inner.dim() == 1 && inner.numel() == p, op, ": inner must have shape [", p,
              "] for ", leaves.numel(), " leaves, got ", inner.sizes());
  TORCH_CHECK(inner.scalar_type() == inner_dtype, op, ": inner must be ", inner_dtype,
              ", got ", inner.scalar_type());
  TORCH_CHECK(inner.is_contiguous(), op, ": inner must be contiguous");
  TORCH_CHECK(inner.device() == leaves.device(), op,
              ": inner and leaves must be on the same device, got ", inner.device(), " and ",
              leaves.device());
}

// The combine rules of the two trees, over leaves of type T: a node of the sum tree is the
// float64 sum of its children (padding 0), one of the min tree their minimum (padding +inf).
template <typename T>
struct SumOf {
  using Node = double;
  static constexpr at::ScalarType kInner = at::kDouble;
  static Node pad() { return 0.0; }
  static Node combine(Node a, Node b) { return a + b; }
};

template <typename T>
struct MinOf {
  using Node = T;
  static constexpr at::ScalarType kInner = c10::CppTypeToScalarType<T>::value;
  static Node pad() { return std::numeric_limits<T>::infinity(); }
  static Node combine(Node a, Node b) { return b < a ? b : a; }
};

// The node at heap position y >= 1: an inner node, a leaf, or padding.
template <typename Op, typename T>
inline typename Op::Node node_at(const typename Op::Node* inner, const T* leaves, int64_t p,
                                 int64_t capacity, int64_t y) {
  if (y < p) return inner[y];
  return y - p < capacity ? static_cast<typename Op::Node>(leaves[y - p]) : Op::pad();
}

// Inner node x recomputed from its two children (leaves when 2x >= P).
template <typename Op, typename T>
inline typename Op::Node children_of(const typename Op::Node* inner, const T* leaves, int64_t p,
                                     int64_t capacity, int64_t x) {
  return Op::combine(node_at<Op>(inner, leaves, p, capacity, 2 * x),
                     node_at<Op>(inner, leaves, p, capacity, 2 * x + 1));
}

// Recomputes every inner node, bottom-up, level by level.
template <typename Op, typename T>
void rebuild_all(typename Op::Node* inner, const T* leaves, int64_t p, int64_t capacity) {
  for (int64_t width = p / 2; width >= 1; width /= 2) {
    at::parallel_for(width, 2 * width, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t x = begin; x < end; ++x) {
        inner[x] = children_of<Op>(inner, leaves, p, capacity, x);
      }
    });
  }
  inner[0] = Op::pad();
}

// Throws unless no value is NaN (the min tree's values); the error names the first offender.
template <typename T>
void check_not_nan(const char* op, const char* name, const T* v, int64_t n) {
  bool ok = true;  // a vectorisable pass; the offender is looked for only on failure
  for (int64_t i = 0; i < n; ++i) ok &= v[i] == v[i];
  for (int64_t i = 0; !ok && i < n; ++i) {
    TORCH_CHECK(v[i] == v[i], op, ": ", name, "[", i, "] = nan is not a valid value "
                "(min tree values must not be NaN)");
  }
}

template <typename T>
void check_tree_values(const char* op, const char* name, const T* v, int64_t n, int64_t capacity,
                       SumOf<T>) {
  check_weights(op, name, v, n, max_leaf<T>(capacity));
}

template <typename T>
void check_tree_values(const char* op, const char* name, const T* v, int64_t n, int64_t, MinOf<T>) {
  check_not_nan(op, name, v, n);
}

template <template <typename> class Of>
at::Tensor tree_build_cpu(const char* op, const at::Tensor& leaves) {
  check_leaves(op, leaves);
  const int64_t capacity = leaves.numel(), p = heap_size(capacity);
  at::Tensor inner;
  AT_DISPATCH_FLOATING_TYPES(leaves.scalar_type(), "tree_build", [&] {
    using Op = Of<scalar_t>;
    inner = at::empty({p}, leaves.options().dtype(Op::kInner));
    check_tree_values(op, "leaves", leaves.data_ptr<scalar_t>(), capacity, capacity, Op{});
    rebuild_all<Op>(inner.data_ptr<typename Op::Node>(), leaves.data_ptr<scalar_t>(), p,
                    capacity);
  });
  return inner;
}

at::Tensor sum_tree_build_cpu(const at::Tensor& leaves) {
  return tree_build_cpu<SumOf>("sum_tree_build", leaves);
}

at::Tensor min_tree_build_cpu(const at::Tensor& leaves) {
  return tree_build_cpu<MinOf>("min_tree_build", leaves);
}

// Prefetch distance (in batch entries) of the update's scattered writes.
constexpr int64_t kUpdatePrefetch = 16;
// An update recomputes an inner level whole when it is at most kDenseLevel times as wide as
// the number of its nodes whose children changed. Tuned at k = 4096, N = 2^20 (of 1, 4 and 8,
// 4 was the fastest).
constexpr int64_t kDenseLevel = 4;

// Recomputes the inner nodes [begin, end) of one level from their children, which are inner
// nodes (not the last inner level): contiguous and vectorisable.
template <typename Op>
inline void combine_inner_children(typename Op::Node* inner, int64_t begin, int64_t end) {
  typename Op::Node* __restrict__ node = inner + begin;
  const typename Op::Node* __restrict__ child = inner + 2 * begin;  // [2 begin, 2 end): disjoint
  for (int64_t i = 0; i < end - begin; ++i) node[i] = Op::combine(child[2 * i], child[2 * i + 1]);
}

// Stores v at *node and tells whether its bits changed (an unchanged node leaves everything
// above it unchanged: every node is a function of its children's bits).
template <typename Node>
inline bool store_changed(Node* node, Node v) {
  const bool changed = std::memcmp(node, &v, sizeof v) != 0;
  *node = v;
  return changed;
}

// Writes leaves[idx[t]] = val[t] (k entries, all valid) and recomputes their ancestors.
// `changed` (k entries of scratch) receives the heap positions of the nodes that change.
template <typename Op, typename T>
void apply_update(T* lv, typename Op::Node* in, const int64_t* idx, const T* val, int64_t k,
                  int64_t capacity, int64_t* changed) {
  const int64_t p = heap_size(capacity);
  // Leaves in batch order, each followed by its parent: the last of duplicated indices wins,
  // and the last write below a parent recomputes it from both final leaves. The scattered
  // accesses miss the caches: each entry prefetches (for writing) those of the
  // kUpdatePrefetch-th next one, so that their misses overlap.
  const auto parent = [&](int64_t t) { return (idx[t] + p) >> 1; };
  int64_t n = 0;  // the parents that changed, in batch order (adjacent repeats once)
  for (int64_t t = 0; t < k; ++t) {
    if (t + kUpdatePrefetch < k) {
      __builtin_prefetch(lv + idx[t + kUpdatePrefetch], 1);
      __builtin_prefetch(in + parent(t + kUpdatePrefetch), 1);
    }
    lv[idx[t]] = val[t];
    const int64_t x = parent(t);
    if (store_changed(in + x, children_of<Op>(in, lv, p, capacity, x)) &&
        (n == 0 || changed[n - 1] != x)) {
      changed[n++] = x;
    }
  }
  // The levels above, bottom-up, from the nodes below that changed (all their children are
  // final): a level at most kDenseLevel * n wide is recomputed whole, and so are all above it
  // (contiguous and vectorised: cheaper than n scattered nodes); a wider one only at the
  // parents of the changed nodes, the parents that change becoming the next level's list. A
  // parent met again (its children are final: same value) is unchanged the second time, and
  // skipped if the repeat is adjacent, as in a run of slots. The min tree's list shrinks fast:
  // a new leaf rarely changes the minimum of a large subtree.
  for (int64_t width = p >> 2; width >= 1 && n > 0; width >>= 1) {
    if (width <= kDenseLevel * n) {
      for (; width >= 1; width >>= 1) {
        at::parallel_for(width, 2 * width, 1 << 14, [&](int64_t begin, int64_t end) {
          combine_inner_children<Op>(in, begin, end);
        });
      }
      break;
    }
    int64_t m = 0;
    for (int64_t t = 0; t < n; ++t) {
      if (t + kUpdatePrefetch < n) __builtin_prefetch(in + (changed[t + kUpdatePrefetch] >> 1), 1);
      const int64_t x = changed[t] >> 1;
      if (m > 0 && changed[m - 1] == x) continue;
      if (store_changed(in + x, Op::combine(in[2 * x], in[2 * x + 1]))) changed[m++] = x;
    }
    n = m;
  }
}

void check_indices(const char* op, const at::Tensor& leaves, const at::Tensor& indices,
                   const char* name) {
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
              indices.scalar_type());
  TORCH_CHECK(indices.dim() == 1, op, ": ", name, " must be 1-D, got shape ", indices.sizes());
  TORCH_CHECK(indices.device() == leaves.device(), op, ": ", name,
              " must be on the tree's device ", leaves.device(), ", got ", indices.device());
}

template <template <typename> class Of>
void tree_update_cpu(const char* op, at::Tensor& leaves, at::Tensor& inner,
                     const at::Tensor& indices, const at::Tensor& values) {
  check_leaves(op, leaves);
  check_indices(op, leaves, indices, "indices");
  TORCH_CHECK(values.scalar_type() == leaves.scalar_type(), op,
              ": values must have the dtype of the tree (", leaves.scalar_type(), "), got ",
              values.scalar_type());
  TORCH_CHECK(values.sizes() == indices.sizes(), op, ": values must have the shape of indices ",
              indices.sizes(), ", got ", values.sizes());
  TORCH_CHECK(values.device() == leaves.device(), op, ": values must be on the tree's device ",
              leaves.device(), ", got ", values.device());
  check_no_overlap(op, {{"leaves", leaves}, {"inner", inner}},
                   {{"indices", indices}, {"values", values}});
  const at::Tensor idx_t = indices.contiguous(), val_t = values.contiguous();
  const int64_t k = idx_t.numel(), capacity = leaves.numel();
  const int64_t* idx = idx_t.data_ptr<int64_t>();
  for (int64_t t = 0; t < k; ++t) {
    TORCH_CHECK(idx[t] >= 0 && idx[t] < capacity, op, ": indices[", t, "] = ", idx[t],
                " is out of range for a tree of capacity ", capacity);
  }
  AT_DISPATCH_FLOATING_TYPES(leaves.scalar_type(), "tree_update", [&] {
    using Op = Of<scalar_t>;
    check_tree(op, leaves, inner, Op::kInner);
    const scalar_t* val = val_t.data_ptr<scalar_t>();
    check_tree_values(op, "values", val, k, capacity, Op{});
    // Everything is valid: mutate.
    std::vector<int64_t> changed(k);
    apply_update<Op>(leaves.data_ptr<scalar_t>(), inner.data_ptr<typename Op::Node>(), idx, val,
                     k, capacity, changed.data());
  });
}

void sum_tree_update_cpu(at::Tensor& leaves, at::Tensor& inner, const at::Tensor& indices,
                         const at::Tensor& values) {
  tree_update_cpu<SumOf>("sum_tree_update", leaves, inner, indices, values);
}

void min_tree_update_cpu(at::Tensor& leaves, at::Tensor& inner, const at::Tensor& indices,
                         const at::Tensor& values) {
  tree_update_cpu<MinOf>("min_tree_update", leaves, inner, indices, values);
}

// ---- range queries --------------------------------------------------------------------------

// The combination of the leaves [start, end): bottom-up, the nodes that cover the range whole,
// combined left to right except that each level's right node comes after its left one (the
// order of the Triton kernel, so that both give the same bits). A range that ends at the last
// leaf is extended over the padding (identity elements), so that [0, capacity) is the root.
template <typename Op, typename T>
typename Op::Node query_range(const typename Op::Node* inner, const T* leaves, int64_t p,
                              int64_t capacity, int64_t start, int64_t end) {
  typename Op::Node acc = Op::pad();
  int64_t l = start + p, r = (end == capacity ? p : end) + p;
  while (l < r) {
    if (l & 1) acc = Op::combine(acc, node_at<Op>(inner, leaves, p, capacity, l++));
    if (r & 1) acc = Op::combine(acc, node_at<Op>(inner, leaves, p, capacity, --r));
    l >>= 1;
    r >>= 1;
  }
  return acc;
}

template <template <typename> class Of>
at::Tensor tree_query_cpu(const char* op, const at::Tensor& leaves, const at::Tensor& inner,
                          const at::Tensor& start, const at::Tensor& end) {
  check_leaves(op, leaves);
  check_indices(op, leaves, start, "start");
  check_indices(op, leaves, end, "end");
  TORCH_CHECK(start.sizes() == end.sizes(), op, ": start and end must have the same shape, got ",
              start.sizes(), " and ", end.sizes());
  const at::Tensor s_t = start.contiguous(), e_t = end.contiguous();
  const int64_t n = s_t.numel(), capacity = leaves.numel(), p = heap_size(capacity);
  const int64_t* s = s_t.data_ptr<int64_t>();
  const int64_t* e = e_t.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(0 <= s[i] && s[i] <= e[i] && e[i] <= capacity, op, ": range [start[", i,
                "], end[", i, "]) = [", s[i], ", ", e[i], ") is not within [0, ", capacity,
                ") (it needs 0 <= start <= end <= capacity)");
  }
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(leaves.scalar_type(), "tree_query", [&] {
    using Op = Of<scalar_t>;
    using Node = typename Op::Node;
    check_tree(op, leaves, inner, Op::kInner);
    out = at::empty({n}, leaves.options().dtype(Op::kInner));
    Node* o = out.data_ptr<Node>();
    const Node* in = inner.data_ptr<Node>();
    const scalar_t* lv = leaves.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) o[i] = query_range<Op>(in, lv, p, capacity, s[i], e[i]);
  });
  return out;
}

at::Tensor sum_tree_query_cpu(const at::Tensor& leaves, const at::Tensor& inner,
                              const at::Tensor& start, const at::Tensor& end) {
  return tree_query_cpu<SumOf>("sum_tree_query", leaves, inner, start, end);
}

at::Tensor min_tree_query_cpu(const at::Tensor& leaves, const at::Tensor& inner,
                              const at::Tensor& start, const at::Tensor& end) {
  return tree_query_cpu<MinOf>("min_tree_query", leaves, inner, start, end);
}

// ---- sampling: the binary descent, kLanes draws per SIMD vector, a chunk of draws per pass ----

// Draws descend kLanes at a time, one per lane of an F64x4 (simd.h).
constexpr int kLanes = 4;

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
  void gather(const int64_t* y, int t, F64x4& v, std::index_sequence<lanes...>) const {
    v = F64x4{node<kLeaf>(y[lanes] + t)...};
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
  F64x4 m[2 * width];  // per lane, the implicit heap of the node's subtree: m[1] is the node
  for (int t = 0; t < width; ++t) {
    tree.template gather<kLeaf>(first, t, m[width + t], std::make_index_sequence<kLanes>());
  }
  for (int y = width - 1; y >= 2; --y) m[y] = m[2 * y] + m[2 * y + 1];
  // The candidates at depth d + k are m[2^k, 2^(k+1)). After each decision, every deeper
  // depth keeps only the half below the chosen child (a per-lane select), so the children
  // to compare next are always m[2^k], m[2^k + 1].
  F64x4 rv;
  std::memcpy(&rv, r, sizeof rv);
  I64x4 offset = {};
  for (int k = 1; k <= S; ++k) {
    const F64x4 left = m[1 << k], right = m[(1 << k) + 1];
    const I64x4 go_right = (right > 0.0) & (rv >= left);  // lanes: all ones (-1) or 0
    rv -= (F64x4)((I64x4)left & go_right);  // r - left, or r - (+0.0), which is r
    offset = 2 * offset - go_right;
    for (int depth = k + 1; depth <= S; ++depth) {
      const int half = 1 << (depth - k);
      F64x4* level = m + (1 << depth);
      for (int t = 0; t < half; ++t) level[t] = go_right ? level[half + t] : level[t];
    }
  }
  std::memcpy(r, &rv, sizeof rv);
  I64x4 xv;
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

// Descends u[begin, end) * scale to their leaves, into out, kChunk draws at a time. A chunk is
// rounded up to whole vectors with padding draws (r = 0: a valid descent) whose leaves are not
// written. Returns the first leaf reached that is padding or of weight 0, or -1 if none: a
// consistent tree never reaches one, inner nodes that do not match the leaves can.
template <typename T>
int64_t descend_range(const TreeView<T>& tree, const Plan& plan, double scale, const double* u,
                      int64_t begin, int64_t end, int64_t* out) {
  alignas(64) int64_t x[kChunk];
  alignas(64) double r[kChunk];
  for (int64_t c = begin; c < end; c += kChunk) {
    const int64_t n = std::min(kChunk, end - c);
    const int64_t lanes = (n + kLanes - 1) / kLanes * kLanes;
    for (int64_t i = 0; i < lanes; ++i) {
      x[i] = 1;
      r[i] = i < n ? u[c + i] * scale : 0.0;
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

// Checks what sample and scan_lower_bound share: the tree, and `name` (their float64 input).
void check_descent(const char* op, const at::Tensor& leaves, const at::Tensor& inner,
                   const at::Tensor& x, const char* name) {
  check_tree(op, leaves, inner, at::kDouble);
  TORCH_CHECK(x.scalar_type() == at::kDouble, op, ": ", name, " must be float64, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() == 1, op, ": ", name, " must be 1-D, got shape ", x.sizes());
  TORCH_CHECK(x.device() == leaves.device(), op, ": ", name, " must be on the tree's device ",
              leaves.device(), ", got ", x.device());
  TORCH_CHECK(x.numel() <= std::numeric_limits<int32_t>::max(), op,
              ": at most 2^31 - 1 entries per call, got ", x.numel());
}

// The leaf of every x * scale: the descent from the root (-1 for all when the total is 0:
// nothing can be drawn). x is contiguous and already checked. Raises if a descent reaches
// padding or a leaf of weight 0: inner nodes that do not match the leaves.
at::Tensor descend_all(const char* op, const at::Tensor& leaves, const at::Tensor& inner,
                       const at::Tensor& x, bool scale_by_total) {
  const int64_t n = x.numel(), capacity = leaves.numel(), p = heap_size(capacity);
  const double* in = inner.data_ptr<double>();
  const double total = in[1];
  if (!(total > 0.0)) return at::full({n}, -1, leaves.options().dtype(at::kLong));
  at::Tensor out = at::empty({n}, leaves.options().dtype(at::kLong));
  int64_t* op_out = out.data_ptr<int64_t>();
  const double* xp = x.data_ptr<double>();
  const double scale = scale_by_total ? total : 1.0;
  const Plan plan = plan_of(log2_exact(p));
  std::atomic<int64_t> bad_leaf{-1};
  AT_DISPATCH_FLOATING_TYPES(leaves.scalar_type(), "sum_tree", [&] {
    const TreeView<scalar_t> tree{in, leaves.data_ptr<scalar_t>(), p, capacity};
    // One thread below 16384 draws: a fork-join costs more than it saves on a busy machine.
    at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
      const int64_t j = descend_range(tree, plan, scale, xp, begin, end, op_out);
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

// Throws unless every u[i] is in [0, 1); the error names the first offender.
void check_uniforms(const char* op, const at::Tensor& u) {
  const double* up = u.data_ptr<double>();
  bool ok = true;  // a vectorisable pass; the offender is looked for only on failure
  for (int64_t i = 0; i < u.numel(); ++i) ok &= (up[i] >= 0.0) & (up[i] < 1.0);
  for (int64_t i = 0; !ok && i < u.numel(); ++i) {
    TORCH_CHECK(up[i] >= 0.0 && up[i] < 1.0, op, ": u[", i, "] = ", up[i], " is not in [0, 1)");
  }
}

// Returns the leaf of every u in [0, 1): the descent of u * total.
at::Tensor sum_tree_sample_cpu(const at::Tensor& leaves, const at::Tensor& inner,
                               const at::Tensor& u) {
  const char* op = "sum_tree_sample";
  check_descent(op, leaves, inner, u, "u");
  const at::Tensor uc = u.contiguous();
  check_uniforms(op, uc);
  return descend_all(op, leaves, inner, uc, true);
}

// Returns the leaf i of every mass m: the one of weight > 0 whose prefix sums satisfy
// prefix(i - 1) <= m < prefix(i) (the descent of m itself); m >= total gives the last leaf
// of weight > 0.
at::Tensor sum_tree_scan_lower_bound_cpu(const at::Tensor& leaves, const at::Tensor& inner,
                                         const at::Tensor& mass) {
  const char* op = "sum_tree_scan_lower_bound";
  check_descent(op, leaves, inner, mass, "mass");
  const at::Tensor mc = mass.contiguous();
  const double* m = mc.data_ptr<double>();
  bool ok = true;
  for (int64_t i = 0; i < mc.numel(); ++i) {
    ok &= (m[i] >= 0.0) & (m[i] <= std::numeric_limits<double>::max());
  }
  for (int64_t i = 0; !ok && i < mc.numel(); ++i) {
    TORCH_CHECK(m[i] >= 0.0 && m[i] <= std::numeric_limits<double>::max(), op, ": mass[", i,
                "] = ", m[i], " is not finite and >= 0");
  }
  return descend_all(op, leaves, inner, mc, false);
}

// ---- prioritized replay: priorities into both trees, draws with their weights ------------

// Checks that a min tree (min_leaves, min_inner) pairs with the sum tree of sum_leaves: same
// capacity, dtype and device.
void check_tree_pair(const char* op, const at::Tensor& sum_leaves, const at::Tensor& min_leaves,
                     const at::Tensor& min_inner) {
  check_tree(op, min_leaves, min_inner, min_leaves.scalar_type());
  TORCH_CHECK(min_leaves.numel() == sum_leaves.numel() &&
                  min_leaves.scalar_type() == sum_leaves.scalar_type() &&
                  min_leaves.device() == sum_leaves.device(),
              op, ": the min tree must have the capacity, dtype and device of the sum tree, got ",
              min_leaves.numel(), " ", min_leaves.scalar_type(), " on ", min_leaves.device(),
              " and ", sum_leaves.numel(), " ", sum_leaves.scalar_type(), " on ",
              sum_leaves.device());
}

void check_exponent(const char* op, const char* name, double x) {
  TORCH_CHECK(x >= 0.0 && x <= std::numeric_limits<double>::max(), op, ": ", name,
              " must be finite and >= 0, got ", x);
}

void check_max_priority(const char* op, const at::Tensor& sum_leaves,
                        const at::Tensor& max_priority) {
  TORCH_CHECK(max_priority.dim() == 0 && max_priority.scalar_type() == at::kDouble &&
                  max_priority.device() == sum_leaves.device(),
              op, ": max_priority must be a float64 0-dim tensor on the tree's device ",
              sum_leaves.device(), ", got ", max_priority.scalar_type(), " of shape ",
              max_priority.sizes(), " on ", max_priority.device());
}

// The checks shared by set_priorities and add_priorities: the trees, max_priority, alpha, eps,
// and that none of the written tensors shares memory with another or with `indices` (if
// given), which are read while the trees are written. The raw priorities are read before
// anything is written: they may be anywhere.
void check_priority_args(const char* op, const at::Tensor& sum_leaves, const at::Tensor& sum_inner,
                         const at::Tensor& min_leaves, const at::Tensor& min_inner,
                         const at::Tensor& max_priority, double alpha, double eps,
                         const at::Tensor& indices) {
  check_tree(op, sum_leaves, sum_inner, at::kDouble);
  check_tree_pair(op, sum_leaves, min_leaves, min_inner);
  check_max_priority(op, sum_leaves, max_priority);
  check_exponent(op, "alpha", alpha);
  check_exponent(op, "eps", eps);
  check_no_overlap(op,
                   {{"sum_leaves", sum_leaves}, {"sum_inner", sum_inner},
                    {"min_leaves", min_leaves}, {"min_inner", min_inner},
                    {"max_priority", max_priority}},
                   {{"indices", indices}});
}

// Checks raw priorities given for n slots: float32 or float64, shape [n], the tree's device.
void check_raw_priorities(const char* op, const at::Tensor& sum_leaves,
                          const at::Tensor& priorities, at::IntArrayRef shape) {
  TORCH_CHECK(priorities.scalar_type() == at::kFloat || priorities.scalar_type() == at::kDouble,
              op, ": priorities must be float32 or float64, got ", priorities.scalar_type());
  TORCH_CHECK(priorities.sizes() == shape, op, ": priorities must have the shape ", shape,
              " of the slots, got ", priorities.sizes());
  TORCH_CHECK(priorities.device() == sum_leaves.device(), op,
              ": priorities must be on the tree's device ", sum_leaves.device(), ", got ",
              priorities.device());
}

// Sets the priorities of the k slots idx: (p + eps)^alpha (computed in the leaf dtype) for the
// raw priority p = raw(t) of every slot, in the sum tree, and in the min tree too, but +inf
// where it is 0 (such a slot is never drawn, so it stays out of the minimum), and raises
// max_priority to the largest p. Every index must be in [0, limit) and every p finite and
// >= 0; nothing changes otherwise. Returns the largest p (0 for none).
template <typename Raw>
double set_priorities(const char* op, at::Tensor& sum_leaves, at::Tensor& sum_inner,
                      at::Tensor& min_leaves, at::Tensor& min_inner, at::Tensor& max_priority,
                      const int64_t* idx, const Raw& raw, int64_t k, double alpha, double eps,
                      int64_t limit) {
  double largest = 0.0;
  for (int64_t t = 0; t < k; ++t) {
    TORCH_CHECK(idx[t] >= 0 && idx[t] < limit, op, ": indices[", t, "] = ", idx[t],
                " is out of range [0, ", limit, ")");
    const double r = raw(t);
    TORCH_CHECK(r >= 0.0 && r <= std::numeric_limits<double>::max(), op, ": priorities[", t,
                "] = ", r, " is not finite and >= 0");
    largest = std::max(largest, r);
  }
  const int64_t capacity = sum_leaves.numel();
  AT_DISPATCH_FLOATING_TYPES(sum_leaves.scalar_type(), "set_priorities", [&] {
    using T = scalar_t;
    std::vector<T> prio(k), prio_min(k);
    const T limit_value = max_leaf<T>(capacity);
    T prev = 0;  // the previous raw priority, in the leaf dtype
    for (int64_t t = 0; t < k; ++t) {
      const T r = static_cast<T>(raw(t));
      if (t > 0 && std::memcmp(&r, &prev, sizeof r) == 0) {  // a run of one priority (an add)
        prio[t] = prio[t - 1];
      } else {
        prio[t] = std::pow(r + static_cast<T>(eps), static_cast<T>(alpha));
        TORCH_CHECK(prio[t] <= limit_value, op, ": priorities[", t, "] = ", raw(t),
                    " gives the weight (p + eps) ** alpha = ", prio[t], ", above ", limit_value);
      }
      prev = r;
      prio_min[t] = prio[t] > T(0) ? prio[t] : std::numeric_limits<T>::infinity();
    }
    // Everything is valid: mutate.
    std::vector<int64_t> changed(k);
    apply_update<SumOf<T>>(sum_leaves.data_ptr<T>(), sum_inner.data_ptr<double>(), idx,
                           prio.data(), k, capacity, changed.data());
    apply_update<MinOf<T>>(min_leaves.data_ptr<T>(), min_inner.data_ptr<T>(), idx,
                           prio_min.data(), k, capacity, changed.data());
  });
  double* mp = max_priority.data_ptr<double>();
  *mp = std::max(*mp, largest);
  return largest;
}

// set_priorities with the raw priorities of a float32 or float64 tensor of k entries.
double set_priorities_of(const char* op, at::Tensor& sum_leaves, at::Tensor& sum_inner,
                         at::Tensor& min_leaves, at::Tensor& min_inner, at::Tensor& max_priority,
                         const int64_t* idx, const at::Tensor& priorities, double alpha,
                         double eps, int64_t limit) {
  const at::Tensor raw_t = priorities.contiguous();
  double largest = 0.0;
  AT_DISPATCH_FLOATING_TYPES(raw_t.scalar_type(), "raw_priorities", [&] {
    const scalar_t* r = raw_t.data_ptr<scalar_t>();
    largest = set_priorities(op, sum_leaves, sum_inner, min_leaves, min_inner, max_priority, idx,
                             [r](int64_t t) { return static_cast<double>(r[t]); },
                             raw_t.numel(), alpha, eps, limit);
  });
  return largest;
}

// Sets the raw priorities of the slots `indices` (each in [0, limit)), as set_priorities.
// Returns the largest (float64 0-dim).
at::Tensor sum_tree_set_priorities_cpu(at::Tensor& sum_leaves, at::Tensor& sum_inner,
                                       at::Tensor& min_leaves, at::Tensor& min_inner,
                                       at::Tensor& max_priority, const at::Tensor& indices,
                                       const at::Tensor& priorities, double alpha, double eps,
                                       int64_t limit) {
  const char* op = "sum_tree_set_priorities";
  check_priority_args(op, sum_leaves, sum_inner, min_leaves, min_inner, max_priority, alpha, eps,
                      indices);
  check_indices(op, sum_leaves, indices, "indices");
  check_raw_priorities(op, sum_leaves, priorities, indices.sizes());
  const int64_t capacity = sum_leaves.numel();
  TORCH_CHECK(0 <= limit && limit <= capacity, op, ": limit must be in [0, ", capacity,
              "], got ", limit);
  const at::Tensor idx_t = indices.contiguous();
  const double largest =
      set_priorities_of(op, sum_leaves, sum_inner, min_leaves, min_inner, max_priority,
                        idx_t.data_ptr<int64_t>(), priorities, alpha, eps, limit);
  return at::scalar_tensor(largest, sum_leaves.options().dtype(at::kDouble));
}

// The ring buffer's add: the n slots (start + i) % capacity, with the raw priorities
// `priorities` ([n]) or, if none, max_priority, set as set_priorities does. Returns the slots
// (int64 [n]) and the largest raw priority (float64 0-dim).
std::tuple<at::Tensor, at::Tensor> sum_tree_add_priorities_cpu(
    at::Tensor& sum_leaves, at::Tensor& sum_inner, at::Tensor& min_leaves,
    at::Tensor& min_inner, at::Tensor& max_priority, int64_t start, int64_t n,
    const std::optional<at::Tensor>& priorities, double alpha, double eps) {
  const char* op = "sum_tree_add_priorities";
  check_priority_args(op, sum_leaves, sum_inner, min_leaves, min_inner, max_priority, alpha, eps,
                      at::Tensor());
  const int64_t capacity = sum_leaves.numel();
  TORCH_CHECK(0 <= start && start < capacity, op, ": start must be in [0, ", capacity, "), got ",
              start);
  TORCH_CHECK(0 <= n && n <= capacity, op, ": n must be in [0, ", capacity, "], got ", n);
  if (priorities.has_value()) check_raw_priorities(op, sum_leaves, *priorities, {n});
  at::Tensor slots = at::empty({n}, sum_leaves.options().dtype(at::kLong));
  int64_t* s = slots.data_ptr<int64_t>();
  for (int64_t i = 0, j = start; i < n; ++i, j = j + 1 == capacity ? 0 : j + 1) s[i] = j;
  double largest = 0.0;
  if (priorities.has_value()) {
    largest = set_priorities_of(op, sum_leaves, sum_inner, min_leaves, min_inner, max_priority, s,
                                *priorities, alpha, eps, capacity);
  } else {
    const double p = max_priority.item<double>();
    largest = set_priorities(op, sum_leaves, sum_inner, min_leaves, min_inner, max_priority, s,
                             [p](int64_t) { return p; }, n, alpha, eps, capacity);
  }
  return {slots, at::scalar_tensor(largest, sum_leaves.options().dtype(at::kDouble))};
}

// n draws from the sum tree with uniforms of `generator` (the default CPU generator if none;
// the uniforms torch.rand(n, dtype=float64, generator=generator) would give), and their
// importance weights (leaf / min)^-beta, min the root of the min tree, computed in the leaf
// dtype; -1 and NaN for every draw of an all-zero tree.
std::tuple<at::Tensor, at::Tensor> sum_tree_sample_weighted_cpu(
    const at::Tensor& sum_leaves, const at::Tensor& sum_inner, const at::Tensor& min_leaves,
    const at::Tensor& min_inner, int64_t n, double beta,
    const std::optional<at::Generator>& generator) {
  const char* op = "sum_tree_sample_weighted";
  check_tree(op, sum_leaves, sum_inner, at::kDouble);
  check_tree_pair(op, sum_leaves, min_leaves, min_inner);
  check_exponent(op, "beta", beta);
  TORCH_CHECK(0 <= n && n <= std::numeric_limits<int32_t>::max(), op,
              ": n must be in [0, 2^31 - 1], got ", n);
  at::Tensor u = at::empty({n}, sum_leaves.options().dtype(at::kDouble));
  {
    auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
        generator, at::detail::getDefaultCPUGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    at::uniform_real_distribution<double> uniform(0.0, 1.0);
    double* up = u.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) up[i] = uniform(gen);
  }
  at::Tensor idx = descend_all(op, sum_leaves, sum_inner, u, true);
  at::Tensor weights = at::empty({n}, sum_leaves.options());
  const int64_t* ip = idx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(sum_leaves.scalar_type(), "sample_weighted", [&] {
    using T = scalar_t;
    const T* lv = sum_leaves.data_ptr<T>();
    const T smallest = min_inner.data_ptr<T>()[1];
    const T exponent = static_cast<T>(-beta);
    T* w = weights.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) {
      w[i] = ip[i] >= 0 ? std::pow(lv[ip[i]] / smallest, exponent)
                        : std::numeric_limits<T>::quiet_NaN();
    }
  });
  return {idx, weights};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(is_kernels, m) {
  m.def("sum_tree_build(Tensor leaves) -> Tensor");
  m.def(
      "sum_tree_update(Tensor(a!) leaves, Tensor(b!) inner, Tensor indices, Tensor values) "
      "-> ()");
  m.def("sum_tree_sample(Tensor leaves, Tensor inner, Tensor u) -> Tensor");
  m.def("sum_tree_scan_lower_bound(Tensor leaves, Tensor inner, Tensor mass) -> Tensor");
  m.def("sum_tree_query(Tensor leaves, Tensor inner, Tensor start, Tensor end) -> Tensor");
  m.def("min_tree_build(Tensor leaves) -> Tensor");
  m.def(
      "min_tree_update(Tensor(a!) leaves, Tensor(b!) inner, Tensor indices, Tensor values) "
      "-> ()");
  m.def("min_tree_query(Tensor leaves, Tensor inner, Tensor start, Tensor end) -> Tensor");
  m.def(
      "sum_tree_set_priorities(Tensor(a!) sum_leaves, Tensor(b!) sum_inner, "
      "Tensor(c!) min_leaves, Tensor(d!) min_inner, Tensor(e!) max_priority, Tensor indices, "
      "Tensor priorities, float alpha, float eps, int limit) -> Tensor");
  m.def(
      "sum_tree_add_priorities(Tensor(a!) sum_leaves, Tensor(b!) sum_inner, "
      "Tensor(c!) min_leaves, Tensor(d!) min_inner, Tensor(e!) max_priority, int start, int n, "
      "Tensor? priorities, float alpha, float eps) -> (Tensor, Tensor)");
  m.def(
      "sum_tree_sample_weighted(Tensor sum_leaves, Tensor sum_inner, Tensor min_leaves, "
      "Tensor min_inner, int n, float beta, Generator? generator=None) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(is_kernels, CPU, m) {
  m.impl("sum_tree_build", &sum_tree_build_cpu);
  m.impl("sum_tree_update", &sum_tree_update_cpu);
  m.impl("sum_tree_sample", &sum_tree_sample_cpu);
  m.impl("sum_tree_scan_lower_bound", &sum_tree_scan_lower_bound_cpu);
  m.impl("sum_tree_query", &sum_tree_query_cpu);
  m.impl("min_tree_build", &min_tree_build_cpu);
  m.impl("min_tree_update", &min_tree_update_cpu);
  m.impl("min_tree_query", &min_tree_query_cpu);
  m.impl("sum_tree_set_priorities", &sum_tree_set_priorities_cpu);
  m.impl("sum_tree_add_priorities", &sum_tree_add_priorities_cpu);
  m.impl("sum_tree_sample_weighted", &sum_tree_sample_weighted_cpu);
}

}  // namespace is_kernels
