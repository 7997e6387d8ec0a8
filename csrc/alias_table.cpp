// Alias table ops (schemas + CPU kernels): O(N) build and O(1) draws
// (docs/algorithms.md, "Weighted sampling").
// The CUDA kernels of the same ops are Triton: is_kernels/ops/alias_table_triton.py.
//
// Groups. The items are taken in groups of G = group_size consecutive items (the last one may
// be shorter), and the alias table is built over the m = ceil(N / G) group sums S_g. A draw
// picks a group from the table (two uniforms), then the item within it by a walk over the
// group's weights with a third uniform u: the first item whose running float64 sum exceeds
// u * S_g (pick). The build's S_g are added in the same order, so the walk over a whole group
// ends on S_g exactly, and the draw gives item i of group g the probability
// (S_g / W) * (w_i / S_g) up to float64 rounding. The draws read the weights themselves (the
// Python AliasTable keeps them and checks that they are not modified in place). With G = 16
// the build does the O(N) work below on N / 16 sums, and a walk reads one 64-byte line of
// float32 weights; G = 1 is the plain alias table.
//
// The table, built over the group sums (called items and weights from here on). With
// p_i = w_i * N / W (mean 1), item i is light if p_i <= 1, heavy otherwise. Vose's sweep over
// the lights and the heavies in index order has a closed form in two non-decreasing
// sequences of keys (Hübschle-Schneider & Sanders 2019; the Triton build uses the same form):
// X_a, the sum of the deficits 1 - p of the lights before light a, and E_b, the sum of the
// excesses p - 1 of the heavies up to heavy b. The sweep is the merge of the two sequences,
// light a coming before heavy b iff E_b > X_a, and then
//   light a: prob = p_a, alias = the heavy current at a (the first b with E_b > X_a);
//   heavy b: prob = 1 - (X_a - E_b) with a the light after b in the merge (b runs out of
//     excess during light a - 1, whose deficits end at X_a), alias = the next heavy. The last
//     heavy, and a heavy that comes after every light (only by rounding), get prob 1 and
//     themselves as alias.
// Why it is exact: heavy b receives prob_b, the deficits of the lights aliased to it, and
// 1 - prob of the heavy b' before it (light a' after b'): (1 - X_a + E_b) + (X_a - X_a') +
// (X_a' - E_b') = 1 + E_b - E_b' = p_b. This holds for any non-decreasing keys equal to the
// prefix sums up to rounding, so the table encodes w_i / W up to float64 rounding. Zero
// weights: p = 0 gives prob exactly 0 and every alias is a heavy (p > 1), so an item of
// weight 0 is never drawn, whatever the rounding and the uniforms.
//
// The CPU build. The table does not depend on the number of threads (the blocks and parts are
// fixed, whichever thread runs them):
// (1) per block of kBlock items, the sum of the weights (and whether they are valid); W;
// (2) per block, its number of heavies and its sums of deficits and of excesses; their
//     running sums over the blocks, accumulated in long double and rounded, are the blocks'
//     key offsets;
// (3) in parallel over parts of kPartBlocks blocks: a part merges the lights of its blocks
//     with the heavies whose keys lie in (lo, hi], lo the key of its first light and hi that
//     of the next part's first light (a block's first light has the block's offset as key),
//     so the parts are consecutive pieces of the one merge. The part lists those lights and
//     heavies (index and key, in cache) by scanning its blocks and the blocks that hold the
//     heavies, runs the merge as kLanes interleaved pieces cut by binary search (independent
//     dependency chains), and writes the table entries of its lights and heavies.
// Keys of a block: the block's offset plus the prefix sums of the deficits (excesses) of its
// lights (heavies) in index order, summed in groups of 4, pairs first; at most the next
// block's offset, which the block's last heavy gets exactly. So the keys do not decrease from
// one block to the next, although (2) sums a block in another order. The groups of 4 are
// F64x4 vectors (simd.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "memory.h"
#include "simd.h"
#include "weights.h"

namespace is_kernels {
namespace {

constexpr int64_t kBlock = 1 << 10;  // items per block (key offsets; grain of the passes)
constexpr int64_t kPartBlocks = 16;  // blocks whose lights one part merges
constexpr int kLanes = 4;            // interleaved pieces of a part's merge
constexpr int64_t kSlack = 4;        // entries past a list's end that compact may write
constexpr int64_t kMaxGroup = 1024;  // the largest group_size (a draw walks its group)

// ---- Groups of 4 values (F64x4, simd.h) ----------------------------------------------------

// p of the items [i, i + 4); past `end`, 1 (a light of deficit 0).
template <typename T>
inline F64x4 load_p(const T* w, int64_t i, int64_t end, F64x4 scale) {
  if (i + 4 <= end) return load_values(w + i) * scale;
  double p[4] = {1.0, 1.0, 1.0, 1.0};
  for (int64_t j = i; j < end; ++j) p[j - i] = static_cast<double>(w[j]) * lane0(scale);
  return load4(p);
}

// The lanes of the items [i, i + 4) before `end`, as bits.
inline int valid_bits(int64_t i, int64_t end) {
  return end - i >= 4 ? 15 : (1 << (end - i)) - 1;
}

// Prefix sums of a group, pairs first: excl = (0, x0, x0 + x1, (x0 + x1) + x2) and
// incl = (x0, x0 + x1, (x0 + x1) + x2, (x0 + x1) + (x2 + x3)).
struct Scan {
  F64x4 excl, incl;
};
inline Scan scan(F64x4 x) {
  const F64x4 shifted = pair_shift(x);     // 0, x0, 0, x2
  const F64x4 pairs = x + shifted;         // x0, x0 + x1, x2, x2 + x3
  const F64x4 low = low_pair_last(pairs);  // 0, 0, x0 + x1, x0 + x1
  return {shifted + low, pairs + low};
}

// ---- Passes over blocks --------------------------------------------------------------------

struct BlockWeights {
  double sum = 0.0;
  double least = 0.0;  // the smallest weight if negative, else 0
};

// The float64 sum of w[begin, end) and its smallest weight (a NaN or inf shows in the sum).
template <typename T>
BlockWeights block_weights(const T* w, int64_t begin, int64_t end) {
  F64x4 sum0 = broadcast(0.0), sum1 = sum0, least = sum0;
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {  // two sums: the adds overlap
    const F64x4 a = load_values(w + i), b = load_values(w + i + 4);
    sum0 = sum0 + a;
    sum1 = sum1 + b;
    least = min(least, min(a, b));
  }
  double s[4], m[4];
  store4(s, sum0 + sum1);
  store4(m, least);
  BlockWeights r{(s[0] + s[1]) + (s[2] + s[3]),
                 std::min(std::min(m[0], m[1]), std::min(m[2], m[3]))};
  for (; i < end; ++i) {
    r.sum += static_cast<double>(w[i]);
    r.least = std::min(r.least, static_cast<double>(w[i]));
  }
  return r;
}

struct BlockSums {
  int64_t heavies = 0;
  double deficit = 0.0, excess = 0.0;
};

// The number of heavies among the items [begin, end) and their sums of deficits and of
// excesses (in any order: the keys are kept below the next block's offset), given the sum of
// their weights. The excesses follow from the deficits: the difference is the sum of p - 1,
// scale * weights - items; they are 0 without heavies, so that a block whose excess offset
// increases holds a heavy.
template <typename T>
BlockSums block_sums(const T* w, int64_t begin, int64_t end, double scale, double weights) {
  const F64x4 s = broadcast(scale), one = broadcast(1.0);
  F64x4 deficit = broadcast(0.0);
  int64_t heavies = 0;
  for (int64_t i = begin; i < end; i += 4) {
    const F64x4 p = load_p(w, i, end, s);
    deficit = deficit + max0(one - p);
    heavies += __builtin_popcount(above_one(p));
  }
  double d[4];
  store4(d, deficit);
  const double deficits = (d[0] + d[1]) + (d[2] + d[3]);
  // fma: rounded once, whether or not the compiler would contract a * b - c.
  const double excesses = deficits + std::fma(scale, weights, -static_cast<double>(end - begin));
  return {heavies, deficits, heavies > 0 ? std::max(0.0, excesses) : 0.0};
}

// Indices and keys of lights or heavies, in index order (so in key order).
struct List {
  double* key;
  int32_t* index;
  int64_t size = 0;
};

// Appends the excesses p - 1 (as keys to be) and indices of the heavies among the items
// [begin, end) to `heavies`; with kLights, also the deficits 1 - p and indices of the lights
// to `lights`, and prefetches the lights' table lines (written after the merge).
template <bool kLights, typename T>
void compact_items(const T* w, int64_t begin, int64_t end, double scale, List& lights,
                   List& heavies, double* prob, int32_t* alias) {
  const F64x4 s = broadcast(scale), one = broadcast(1.0);
  int64_t nl = lights.size, nh = heavies.size;
  // Inlined: called out of line, the groups' vectors would pass through memory.
  const auto group = [&](int64_t i, int valid) C10_ALWAYS_INLINE_ATTRIBUTE {
    const F64x4 p = load_p(w, i, end, s);
    const int heavy = above_one(p);
    nh = compact(p - one, heavy, i, heavies.key, heavies.index, nh);
    if (kLights) nl = compact(one - p, ~heavy & valid, i, lights.key, lights.index, nl);
  };
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    group(i, 15);
    group(i + 4, 15);
    if (kLights) {
      __builtin_prefetch(prob + i, 1);
      __builtin_prefetch(alias + i, 1);
    }
  }
  for (; i < end; i += 4) group(i, valid_bits(i, end));
  lights.size = nl;
  heavies.size = nh;
}

// In place: x[0, n) -> offset + their prefix sums (exclusive or inclusive), at most cap.
// Groups of 4 (see scan) with a carry every 8.
template <bool kInclusive>
void to_keys(double* x, int64_t n, double offset, double cap) {
  const F64x4 off = broadcast(offset), top = broadcast(cap);
  double carry = 0.0;
  const auto eight = [&](double* y) {
    const Scan a = scan(load4(y)), b = scan(load4(y + 4));
    const F64x4 a_sum = lane3(a.incl), c = broadcast(carry);
    store4(y, min(off + (c + (kInclusive ? a.incl : a.excl)), top));
    store4(y + 4, min(off + (c + (a_sum + (kInclusive ? b.incl : b.excl))), top));
    carry += lane0(a_sum + lane3(b.incl));
  };
  int64_t q = 0;
  for (; q + 8 <= n; q += 8) eight(x + q);
  if (q < n) {  // the last entries, padded with zeros (which change no key before them)
    double tail[8] = {};
    std::copy(x + q, x + n, tail);
    eight(tail);
    std::copy(tail, tail + (n - q), x + q);
  }
}

// ---- The merge -----------------------------------------------------------------------------

// Non-negative doubles (and +inf) order as their bit patterns: the merge compares integers,
// which shortens its dependency chain.
inline int64_t key_bits(const double* key) {
  int64_t bits;
  std::memcpy(&bits, key, sizeof bits);
  return bits;
}

// One step of a merge piece of slot offset j, at light a and heavy b: light a comes first iff
// E[b] > X[a]. Writes b to the light's slot and a to the heavy's, then advances a or b.
template <int j>
C10_ALWAYS_INLINE void merge_step(const double* X, const double* E, int32_t* light_heavy,
                                  int32_t* heavy_light, int64_t& a, int64_t& b) {
#if defined(__x86_64__) && defined(__GNUC__)
  // The carry flag of one compare of the keys' bits (non-negative doubles order as their bits,
  // signed or unsigned) advances the cursors: a short dependency chain in few instructions.
  int64_t t;
  asm volatile(
      "movq (%[X],%[a],8), %[t]\n\t"
      "cmpq (%[E],%[b],8), %[t]\n\t"  // CF: X[a] < E[b]
      "movl %k[b], %c[off](%[LH],%[a],4)\n\t"
      "movl %k[a], %c[off](%[HL],%[b],4)\n\t"
      "sbbq %[t], %[t]\n\t"  // t = -CF
      "subq %[t], %[a]\n\t"  // a += CF
      "leaq 1(%[b],%[t]), %[b]"  // b += 1 - CF
      : [a] "+r"(a), [b] "+r"(b), [t] "=&r"(t)
      : [X] "r"(X), [E] "r"(E), [LH] "r"(light_heavy), [HL] "r"(heavy_light), [off] "i"(4 * j)
      : "cc", "memory");
#else
  const int64_t light = key_bits(E + b) > key_bits(X + a);
  light_heavy[a + j] = static_cast<int32_t>(b);
  heavy_light[b + j] = static_cast<int32_t>(a);
  a += light;
  b += 1 - light;
#endif
}

// The merge of the lights X[0, ...) with the heavies E[0, ...), run as kLanes pieces advanced
// together (their dependency chains overlap): piece j makes the steps [s0[j], s0[j + 1]) from
// light a0[j] and heavy s0[j] - a0[j]. Each step writes, for its light a and heavy b, b to
// the light's slot and a to the heavy's; the last write to a slot is by the step that emits
// that light or heavy. Piece j uses the slots a + j and b + j, so that its cursors end on
// slots of its own.
void merge(const double* X, const double* E, const int64_t* s0, const int64_t* a0,
           int32_t* light_heavy, int32_t* heavy_light) {
  static_assert(kLanes == 4, "the pieces' cursors are named");
  // Named variables, not arrays: the cursors stay in registers.
  int64_t a_0 = a0[0], a_1 = a0[1], a_2 = a0[2], a_3 = a0[3];
  int64_t b_0 = s0[0] - a_0, b_1 = s0[1] - a_1, b_2 = s0[2] - a_2, b_3 = s0[3] - a_3;
  int64_t steps = s0[1] - s0[0];
  for (int j = 1; j < kLanes; ++j) steps = std::min(steps, s0[j + 1] - s0[j]);
  for (int64_t t = 0; t < steps; ++t) {
    merge_step<0>(X, E, light_heavy, heavy_light, a_0, b_0);
    merge_step<1>(X, E, light_heavy, heavy_light, a_1, b_1);
    merge_step<2>(X, E, light_heavy, heavy_light, a_2, b_2);
    merge_step<3>(X, E, light_heavy, heavy_light, a_3, b_3);
  }
  // The pieces' lengths differ by at most one: at most one more step each.
  if (a_0 + b_0 < s0[1]) merge_step<0>(X, E, light_heavy, heavy_light, a_0, b_0);
  if (a_1 + b_1 < s0[2]) merge_step<1>(X, E, light_heavy, heavy_light, a_1, b_1);
  if (a_2 + b_2 < s0[3]) merge_step<2>(X, E, light_heavy, heavy_light, a_2, b_2);
  if (a_3 + b_3 < s0[4]) merge_step<3>(X, E, light_heavy, heavy_light, a_3, b_3);
}

// The number of lights among the first s steps of the merge of X[0, nl) with E[0, nh).
int64_t lights_before(const double* X, int64_t nl, const double* E, int64_t nh, int64_t s) {
  int64_t lo = std::max<int64_t>(0, s - nh), hi = std::min(s, nl);
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (E[s - mid - 1] > X[mid]) {  // light mid comes before heavy s - mid - 1
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// ---- The parts ---------------------------------------------------------------------------

template <typename T>
class PartBuilder {
 public:
  // offsets[c]: the sums of the blocks before block c (there is at least one heavy).
  PartBuilder(const T* w, int64_t n, double scale, std::vector<BlockSums> offsets, double* prob,
              int32_t* alias)
      : w_(w), n_(n), scale_(scale), blocks_(static_cast<int64_t>(offsets.size()) - 1),
        off_(std::move(offsets)), prob_(prob), alias_(alias) {
    last_block_ = blocks_ - 1;  // the block of the last heavy
    while (off_[last_block_].heavies == off_[blocks_].heavies) --last_block_;
  }

  int64_t parts() const { return (blocks_ + kPartBlocks - 1) / kPartBlocks; }

  // Writes the table entries of the lights of part k's blocks and of the heavies merged
  // with them.
  void build(int64_t k) const {
    const int64_t b0 = k * kPartBlocks, b1 = std::min(blocks_, b0 + kPartBlocks);
    const bool last = b1 == blocks_;
    const double lo = off_[b0].deficit, hi = off_[b1].deficit;
    // The heavies of keys in (lo, hi] and the one after them lie in the blocks [g0, g1] (a
    // block's last heavy has the block's end offset as key; the last heavy of all, +inf).
    const int64_t g0 = heavy_block_after(lo), g1 = last ? last_block_ : heavy_block_after(hi);
    const int64_t before_end = std::min(g1 + 1, b0), after_begin = std::max(g0, b1);
    const int64_t items = std::min(n_, b1 * kBlock) - b0 * kBlock;
    const int64_t heavies = heavies_in(g0, before_end) + heavies_in(b0, b1) +
                            heavies_in(after_begin, g1 + 1);
    // Scratch: the lists (the lights' with a sentinel), then the merge's slots.
    const int64_t light_cap = items + 1 + kSlack, heavy_cap = heavies + kSlack;
    char* const buf = thread_scratch(12 * (light_cap + heavy_cap) +
                                     4 * (items + heavies + 2 * kLanes + 2));
    List lights{reinterpret_cast<double*>(buf), nullptr};
    List all_heavies{lights.key + light_cap, nullptr};
    lights.index = reinterpret_cast<int32_t*>(all_heavies.key + heavy_cap);
    all_heavies.index = lights.index + light_cap;

    for (int64_t c = g0; c < before_end; ++c) list_block(c, nullptr, all_heavies);
    for (int64_t c = b0; c < b1; ++c) list_block(c, &lights, all_heavies);
    for (int64_t c = after_begin; c <= g1; ++c) list_block(c, nullptr, all_heavies);
    lights.key[lights.size] = hi;  // the next part's first light
    lights.index[lights.size] = 0;
    // Heavies of keys <= lo belong to earlier parts; of keys > hi, to later ones.
    const int64_t first = std::upper_bound(all_heavies.key, all_heavies.key + all_heavies.size,
                                           lo) - all_heavies.key;
    const List heavy{all_heavies.key + first, all_heavies.index + first,
                     all_heavies.size - first};
    const int64_t merged = std::upper_bound(heavy.key, heavy.key + heavy.size, hi) - heavy.key;

    const int64_t steps = lights.size + merged;
    int64_t s0[kLanes + 1], a0[kLanes + 1];
    for (int j = 0; j <= kLanes; ++j) {
      s0[j] = steps * j / kLanes;
      a0[j] = lights_before(lights.key, lights.size, heavy.key, merged, s0[j]);
    }
    int32_t* const light_heavy = all_heavies.index + heavy_cap;
    int32_t* const heavy_light = light_heavy + lights.size + kLanes + 1;
    merge(lights.key, heavy.key, s0, a0, light_heavy, heavy_light);
    for (int j = 0; j < kLanes; ++j) {
      write_lights(lights, heavy, light_heavy + j, a0[j], a0[j + 1]);
      write_heavies(lights, heavy, heavy_light + j, s0[j] - a0[j], s0[j + 1] - a0[j + 1]);
    }
    if (last) {  // heavies after every light: the last heavy, and any by rounding
      for (int64_t b = merged; b < heavy.size; ++b) {
        prob_[heavy.index[b]] = 1.0;
        alias_[heavy.index[b]] = heavy.index[b];
      }
    }
  }

 private:
  int64_t block_end(int64_t c) const { return std::min(n_, (c + 1) * kBlock); }

  int64_t heavies_in(int64_t c0, int64_t c1) const {
    return c1 > c0 ? off_[c1].heavies - off_[c0].heavies : 0;
  }

  // The first block with a heavy of key > x (there is one: the last heavy's key is +inf).
  int64_t heavy_block_after(double x) const {
    const auto it = std::upper_bound(off_.begin() + 1, off_.end(), x,
                                     [](double v, const BlockSums& s) { return v < s.excess; });
    return std::min<int64_t>(it - off_.begin() - 1, last_block_);
  }

  // Appends the heavies of block c to `heavies` and, if given, its lights to `lights`, with
  // their keys.
  void list_block(int64_t c, List* lights, List& heavies) const {
    const int64_t begin = c * kBlock, end = block_end(c), h0 = heavies.size;
    if (lights != nullptr) {
      const int64_t l0 = lights->size;
      compact_items<true>(w_, begin, end, scale_, *lights, heavies, prob_, alias_);
      to_keys<false>(lights->key + l0, lights->size - l0, off_[c].deficit, off_[c + 1].deficit);
    } else {
      List no_lights{nullptr, nullptr};
      compact_items<false>(w_, begin, end, scale_, no_lights, heavies, prob_, alias_);
    }
    to_keys<true>(heavies.key + h0, heavies.size - h0, off_[c].excess, off_[c + 1].excess);
    if (heavies.size > h0) {
      heavies.key[heavies.size - 1] =
          c == last_block_ ? std::numeric_limits<double>::infinity() : off_[c + 1].excess;
    }
  }

  // Light a: prob p_a, alias the heavy current when the merge emitted it.
  void write_lights(const List& lights, const List& heavy, const int32_t* light_heavy,
                    int64_t a0, int64_t a1) const {
    for (int64_t a = a0; a < a1; ++a) {
      const int32_t i = lights.index[a];
      prob_[i] = static_cast<double>(w_[i]) * scale_;
      alias_[i] = heavy.index[light_heavy[a]];
    }
  }

  // Heavy b: prob 1 - (X_a - E_b) for the light a current when the merge emitted it (at most
  // 1, and at least 0 up to rounding), alias the next heavy.
  void write_heavies(const List& lights, const List& heavy, const int32_t* heavy_light,
                     int64_t b0, int64_t b1) const {
    for (int64_t b = b0; b < b1; ++b) {
      const int32_t h = heavy.index[b];
      prob_[h] = std::max(0.0, 1.0 - (lights.key[heavy_light[b]] - heavy.key[b]));
      alias_[h] = heavy.index[b + 1];
    }
  }

  const T* w_;
  int64_t n_;
  double scale_;
  int64_t blocks_, last_block_;
  std::vector<BlockSums> off_;
  double* prob_;
  int32_t* alias_;
};

// Runs f(k) for k in [0, count) on the threads, handing out one k at a time (a thread that is
// slower, or held up on a shared machine, takes fewer); f must not depend on the thread.
template <typename F>
void parallel_each(int64_t count, const F& f) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, count, 1, [&](int64_t, int64_t) {
    for (int64_t k = next++; k < count; k = next++) f(k);
  });
}

template <typename T>
void build_cpu(const char* op, const T* w, int64_t n, double* prob, int32_t* alias) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const auto block_end = [&](int64_t c) { return std::min(n, (c + 1) * kBlock); };
  // The first passes go over the blocks in runs of kPartBlocks.
  const int64_t runs = (blocks + kPartBlocks - 1) / kPartBlocks;
  const auto for_each_block = [&](const auto& f) {
    parallel_each(runs, [&](int64_t k) {
      for (int64_t c = k * kPartBlocks; c < std::min(blocks, (k + 1) * kPartBlocks); ++c) f(c);
    });
  };
  // (1) W; the weights' validity.
  std::vector<BlockWeights> weights(blocks);
  for_each_block([&](int64_t c) { weights[c] = block_weights(w, c * kBlock, block_end(c)); });
  double total = 0.0, least = 0.0;
  for (const BlockWeights& b : weights) {
    total += b.sum;
    least = std::min(least, b.least);
  }
  if (!(std::isfinite(total) && least >= 0.0)) {
    check_weights(op, "weights", w, n);  // raises, naming the first invalid weight
    TORCH_CHECK(false, op, ": the sum of the weights overflows float64");
  }
  TORCH_CHECK(total > 0.0, op, ": all weights are zero, there is nothing to sample");
  const double scale = static_cast<double>(n) / total;
  if (!std::isfinite(scale)) {
    // Tiny (e.g. subnormal float64) weights: n / total overflows. The table of the weights
    // times 2^shift (exact: no product overflows, as each weight is at most the total) is the
    // same table.
    const int shift = -std::ilogb(total);
    std::vector<double> scaled(n);
    for (int64_t i = 0; i < n; ++i) scaled[i] = std::ldexp(static_cast<double>(w[i]), shift);
    build_cpu(op, scaled.data(), n, prob, alias);
    return;
  }

  // (2) The key offsets (long double: 64-bit significand on x86-64, so the rounded running
  // sums carry no error that grows with the number of blocks).
  std::vector<BlockSums> offsets(blocks + 1);
  for_each_block([&](int64_t c) {
    offsets[c + 1] = block_sums(w, c * kBlock, block_end(c), scale, weights[c].sum);
  });
  long double deficit = 0.0L, excess = 0.0L;
  for (int64_t c = 1; c <= blocks; ++c) {
    deficit += offsets[c].deficit;
    excess += offsets[c].excess;
    offsets[c] = {offsets[c - 1].heavies + offsets[c].heavies, static_cast<double>(deficit),
                  static_cast<double>(excess)};
  }
  if (offsets[blocks].heavies == 0) {  // every p is 1 up to rounding: each item its own alias
    at::parallel_for(0, n, kBlock, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        prob[i] = static_cast<double>(w[i]) * scale;
        alias[i] = static_cast<int32_t>(i);
      }
    });
    return;
  }

  // (3) The parts.
  const PartBuilder<T> builder(w, n, scale, std::move(offsets), prob, alias);
  parallel_each(builder.parts(), [&](int64_t k) { builder.build(k); });
}

// ---- Groups ----------------------------------------------------------------------------------

// The sum of the weights [begin, end), added in index order in float64. The build's group
// sums and the draws' walks (pick) both add this way, so a walk over a whole group ends
// exactly on the group's sum.
template <typename T>
double group_sum(const T* w, int64_t begin, int64_t end) {
  double sum = 0.0;
  for (int64_t i = begin; i < end; ++i) sum += static_cast<double>(w[i]);
  return sum;
}

// Writes the sums of the groups [g0, g1) of `group` items (all whole) to sums: eight groups at
// a time, two F64x4 of chains of adds that overlap (each chain adds in index order).
template <typename T>
void whole_group_sums(const T* w, int64_t group, int64_t g0, int64_t g1, double* sums) {
  int64_t g = g0;
  for (; g + 8 <= g1; g += 8) {
    F64x4 s0 = broadcast(0.0), s1 = s0;
    const T* x = w + g * group;
    for (int64_t k = 0; k < group; ++k) {
      s0 += load_strided(x + k, group);
      s1 += load_strided(x + 4 * group + k, group);
    }
    store4(sums + g, s0);
    store4(sums + g + 4, s1);
  }
  for (; g < g1; ++g) sums[g] = group_sum(w, g * group, (g + 1) * group);
}

// Writes the sum of every group of `group` items to sums (m groups); returns the total and the
// least weight (0 if none is negative; a NaN or inf shows in the total).
template <typename T>
BlockWeights group_sums(const T* w, int64_t n, int64_t group, int64_t m, double* sums) {
  constexpr int64_t kGrain = int64_t{1} << 14;  // items per task
  const int64_t groups_per_task = std::max<int64_t>(1, kGrain / group);
  const int64_t tasks = (m + groups_per_task - 1) / groups_per_task;
  std::vector<BlockWeights> parts(tasks);
  parallel_each(tasks, [&](int64_t t) {
    const int64_t g0 = t * groups_per_task, g1 = std::min(m, g0 + groups_per_task);
    const int64_t begin = g0 * group, end = std::min(n, g1 * group);
    parts[t] = block_weights(w, begin, end);
    const bool short_last = g1 == m && end < g1 * group;
    whole_group_sums(w, group, g0, short_last ? g1 - 1 : g1, sums);
    if (short_last) sums[m - 1] = group_sum(w, (m - 1) * group, n);
  });
  BlockWeights all;
  for (const BlockWeights& p : parts) {
    all.sum += p.sum;
    all.least = std::min(all.least, p.least);
  }
  return all;
}

// The item of group [begin, end) drawn for r = u * (the group's sum): the first i whose
// running sum exceeds r. A weight of 0 leaves the running sum as it was, which did not exceed
// r, so it is never drawn. If r reaches the sum by rounding, the last item of positive weight.
template <typename T>
int64_t pick(const T* w, int64_t begin, int64_t end, double r) {
  double sum = 0.0;
  int64_t last = begin;
  for (int64_t i = begin; i < end; ++i) {
    const double x = static_cast<double>(w[i]);
    sum += x;
    if (sum > r) return i;
    if (x > 0.0) last = i;
  }
  return last;
}

// ---- The ops ---------------------------------------------------------------------------------

int64_t num_groups(int64_t n, int64_t group) { return (n + group - 1) / group; }

void check_group_size(const char* op, int64_t group) {
  TORCH_CHECK(group >= 1 && group <= kMaxGroup, op, ": group_size must be in [1, ", kMaxGroup,
              "], got ", group);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alias_table_build_cpu(
    const at::Tensor& weights_in, int64_t group) {
  const char* op = "alias_table_build";
  TORCH_CHECK(weights_in.dim() == 1 && weights_in.numel() >= 1, op,
              ": weights must be a non-empty 1-D tensor, got shape ", weights_in.sizes());
  TORCH_CHECK(weights_in.scalar_type() == at::kFloat || weights_in.scalar_type() == at::kDouble,
              op, ": weights must be float32 or float64, got ", weights_in.scalar_type());
  check_group_size(op, group);
  const int64_t n = weights_in.numel(), m = num_groups(n, group);
  TORCH_CHECK(n <= std::numeric_limits<int32_t>::max(), op,
              ": weights may have at most 2^31 - 1 entries, got ", n);
  const at::Tensor weights = weights_in.contiguous();
  // Reused once free (memory.h): a rebuilt table gets a freed one's memory, without faulting
  // (and zeroing) its pages in again. Buffers up to 256 MiB are kept.
  static auto* const prob_buffer = new ReusableBuffer(int64_t{256} << 20);
  static auto* const alias_buffer = new ReusableBuffer(int64_t{256} << 20);
  static auto* const sums_buffer = new ReusableBuffer(int64_t{256} << 20);
  const auto f64 = weights.options().dtype(at::kDouble);
  at::Tensor prob = prob_buffer->take({m}, f64);
  at::Tensor alias = alias_buffer->take({m}, weights.options().dtype(at::kInt));
  // With groups of one item the draws need no sums.
  at::Tensor sums = sums_buffer->take({group == 1 ? 0 : m}, f64);
  advise_huge_pages(prob.data_ptr(), m * sizeof(double));
  advise_huge_pages(alias.data_ptr(), m * sizeof(int32_t));
  advise_huge_pages(sums.data_ptr(), sums.numel() * sizeof(double));
  double* const sp = sums.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "alias_table_build", [&] {
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    if (group == 1) {  // the table of the weights themselves (build_cpu checks them)
      build_cpu(op, w, n, prob.data_ptr<double>(), alias.data_ptr<int32_t>());
      return;
    }
    const BlockWeights all = group_sums(w, n, group, m, sp);
    if (!(std::isfinite(all.sum) && all.least >= 0.0)) {
      check_weights(op, "weights", w, n);  // raises, naming the first invalid weight
      TORCH_CHECK(false, op, ": the sum of the weights overflows float64");
    }
    build_cpu(op, static_cast<const double*>(sp), m, prob.data_ptr<double>(),
              alias.data_ptr<int32_t>());
  });
  return {prob, alias, sums};
}

void check_table(const char* op, const at::Tensor& prob, const at::Tensor& alias,
                 const at::Tensor& sums, const at::Tensor& weights, int64_t group) {
  check_group_size(op, group);
  TORCH_CHECK(prob.dim() == 1 && prob.numel() >= 1 && prob.scalar_type() == at::kDouble &&
                  prob.is_contiguous(),
              op, ": prob must be a contiguous non-empty 1-D float64 tensor, got ",
              prob.scalar_type(), " of shape ", prob.sizes());
  TORCH_CHECK(alias.scalar_type() == at::kInt && alias.sizes() == prob.sizes() &&
                  alias.is_contiguous(),
              op, ": alias must be a contiguous int32 tensor of shape ", prob.sizes(), ", got ",
              alias.scalar_type(), " of shape ", alias.sizes());
  const int64_t sums_size = group == 1 ? 0 : prob.numel();
  TORCH_CHECK(sums.scalar_type() == at::kDouble && sums.dim() == 1 &&
                  sums.numel() == sums_size && sums.is_contiguous(),
              op, ": sums must be a contiguous float64 tensor of shape [", sums_size,
              "], got ", sums.scalar_type(), " of shape ", sums.sizes());
  TORCH_CHECK((weights.scalar_type() == at::kFloat || weights.scalar_type() == at::kDouble) &&
                  weights.dim() == 1 && weights.is_contiguous() &&
                  num_groups(weights.numel(), group) == prob.numel(),
              op, ": weights must be a contiguous 1-D float32 or float64 tensor in ",
              prob.numel(), " groups of ", group, ", got ", weights.scalar_type(), " of shape ",
              weights.sizes());
  for (const at::Tensor* t : {&alias, &sums, &weights}) {
    TORCH_CHECK(t->device() == prob.device(), op,
                ": the table's tensors must be on one device, got ", prob.device(), " and ",
                t->device());
  }
}

at::Tensor alias_table_sample_cpu(const at::Tensor& prob, const at::Tensor& alias,
                                  const at::Tensor& sums, const at::Tensor& weights,
                                  const at::Tensor& u, int64_t group) {
  const char* op = "alias_table_sample";
  check_table(op, prob, alias, sums, weights, group);
  TORCH_CHECK(u.scalar_type() == at::kDouble && u.dim() == 2 && u.size(0) == 3, op,
              ": u must be float64 of shape [3, n], got ", u.scalar_type(), " of shape ",
              u.sizes());
  TORCH_CHECK(u.device() == prob.device(), op, ": u must be on the table's device ",
              prob.device(), ", got ", u.device());
  const at::Tensor uc = u.contiguous();
  const int64_t n = uc.size(1), m = prob.numel(), size = weights.numel();
  const double* up = uc.data_ptr<double>();
  for (int64_t i = 0; i < 3 * n; ++i) {
    TORCH_CHECK(up[i] >= 0.0 && up[i] < 1.0, op, ": u[", i / n, ", ", i % n, "] = ", up[i],
                " is not in [0, 1)");
  }
  at::Tensor out = at::empty({n}, prob.options().dtype(at::kLong));
  const double* pp = prob.data_ptr<double>();
  const int32_t* ap = alias.data_ptr<int32_t>();
  const double* sp = sums.data_ptr<double>();
  int64_t* o = out.data_ptr<int64_t>();
  const double dm = static_cast<double>(m);
  // u * m < m in exact arithmetic, but may round up to m.
  const auto bucket = [&](int64_t i) { return std::min(static_cast<int64_t>(up[i] * dm), m - 1); };
  // Draws hit random entries of tables larger than the caches: each one prefetches what the
  // draw kPrefetch ahead reads, so that the misses overlap. The first pass draws the groups
  // (prefetching the bucket entries), the second the items (prefetching the group's
  // weights); the threads share the draws from 2 * kGrain on.
  // Every drawn group is checked against [0, m) before the second pass reads with it: the
  // table is an input of a public op, and an alias entry out of range must raise, not read
  // out of bounds (one unsigned compare per draw).
  constexpr int64_t kPrefetch = 32, kGrain = 1024;
  std::atomic<bool> out_of_range{false};
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "alias_table_sample", [&] {
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      bool bad = false;
      for (int64_t i = begin; i < end; ++i) {
        if (i + kPrefetch < end) {
          const int64_t ahead = bucket(i + kPrefetch);
          __builtin_prefetch(pp + ahead);
          __builtin_prefetch(ap + ahead);
        }
        const int64_t k = bucket(i);
        o[i] = up[n + i] < pp[k] ? k : static_cast<int64_t>(ap[k]);
        bad |= static_cast<uint64_t>(o[i]) >= static_cast<uint64_t>(m);
      }
      if (bad) {
        out_of_range = true;
        return;
      }
      if (group == 1) return;  // the group is the item
      for (int64_t i = begin; i < end; ++i) {
        if (i + kPrefetch < end) {
          const int64_t ahead = o[i + kPrefetch];
          __builtin_prefetch(sp + ahead);
          __builtin_prefetch(w + ahead * group);
        }
        const int64_t g = o[i];
        o[i] = pick(w, g * group, std::min(size, (g + 1) * group), up[2 * n + i] * sp[g]);
      }
    });
  });
  if (out_of_range) {
    int64_t k = 0;
    while (ap[k] >= 0 && ap[k] < m) ++k;
    TORCH_CHECK_INDEX(false, op, ": alias[", k, "] = ", ap[k], " is out of range for a table of ",
                      m, " entries (not a table built by alias_table_build)");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(is_kernels, m) {
  m.def("alias_table_build(Tensor weights, int group_size) -> (Tensor, Tensor, Tensor)");
  m.def("alias_table_sample(Tensor prob, Tensor alias, Tensor sums, Tensor weights, Tensor u, "
        "int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(is_kernels, CPU, m) {
  m.impl("alias_table_build", &alias_table_build_cpu);
  m.impl("alias_table_sample", &alias_table_sample_cpu);
}

}  // namespace is_kernels
