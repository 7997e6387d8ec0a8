// Alias table ops (schemas + CPU kernels): O(N) build and O(1) draws (ALGORITHMS.md section 5).
// The CUDA kernels of the same ops are Triton: is_kernels/alias_table_triton.py.
//
// Build, with p_i = w_i * N / W (mean 1): item i is light if p_i <= 1, heavy otherwise.
// D(i) = sum of the deficits 1 - p_l of the lights l <= i, E(i) = sum of the excesses
// p_h - 1 of the heavies h <= i (prefix sums in index order). The sequential sweep of Vose's
// method has a closed form in these prefix sums, which makes every item independent:
//   light i: prob = p_i, alias = the first heavy h with E(h) > D(i-1) (the heavy that is
//     current in the sweep when i is reached);
//   heavy h: alias = the next heavy; prob = 1 - (D(l) - E(h)), with l the first light with
//     D(l) >= E(h) (the light during which h ran out of excess and became light itself);
//     the last heavy (or one with no such l) has prob 1.
// CPU build: the closed form is a merge of the lights (by D(i - 1)) with the heavies (by
// E(h)) in index order, which is how it runs: (1) the total; (2) every chunk's counts and
// sums (the chunks' offsets); (3) every chunk writes its lights and heavies, with their
// prefix sums, to two lists (parallel over chunks); (4) a branch-free merge of the two
// lists writes every entry, cut into parts at chosen lights whose starting heavy a binary
// search finds (parallel over parts; the result is that of one sequential merge).
// Zero weights: p = 0 gives prob exactly 0, and aliases are always heavies (p > 1), so an
// item of weight 0 can never be drawn.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "memory.h"
#include "weights.h"

namespace is_kernels {
namespace {

// Items per chunk of the parallel passes (fixed: the table does not depend on the threads).
constexpr int64_t kChunk = 1 << 15;

// Prefix sums and lists of one chunk. Lights and heavies are listed in index order, with
// the inclusive prefix sums D (lights) and E (heavies) of the whole table.
struct Lists {
  int32_t* light;  // light[k]: index of the k-th light
  double* dl;      // dl[k + 1] = D(light[k]); dl[0] = 0
  int32_t* heavy;  // heavy[k]: index of the k-th heavy
  double* eh;      // eh[k] = E(heavy[k])
};

struct ChunkSums {
  int64_t lights = 0, heavies = 0;
  double d = 0.0, e = 0.0;  // this chunk's sums of deficits and excesses
};

// Sweeps the items [begin, end): classifies them and accumulates the chunk's deficits and
// excesses in index order. With `out`, also writes the chunk's list entries at the positions
// `start` (lights, heavies) with prefix sums offset by `start` (D, E of the earlier chunks).
// Both passes run this same code, so the sums they see are bit for bit the same.
template <typename T>
ChunkSums sweep_chunk(const T* w, int64_t begin, int64_t end, double scale, const Lists* out,
                      const ChunkSums& start) {
  ChunkSums s;
  int32_t dummy_index;
  double dummy_sum;
  for (int64_t i = begin; i < end; ++i) {
    const double p = static_cast<double>(w[i]) * scale;
    const bool heavy = p > 1.0;
    // Branch-free (the classes are random): a product with 0 or 1 is exact.
    const double h = static_cast<double>(heavy);
    s.d += (1.0 - h) * (1.0 - p);
    s.e += h * (p - 1.0);
    if (out != nullptr) {
      // Each item is written to its list and to this call's dummies (for the other list).
      int32_t* const li = heavy ? &dummy_index : out->light + start.lights + s.lights;
      double* const ld = heavy ? &dummy_sum : out->dl + start.lights + s.lights + 1;
      int32_t* const hi = heavy ? out->heavy + start.heavies + s.heavies : &dummy_index;
      double* const hd = heavy ? out->eh + start.heavies + s.heavies : &dummy_sum;
      *li = static_cast<int32_t>(i);
      *ld = start.d + s.d;
      *hi = static_cast<int32_t>(i);
      *hd = start.e + s.e;
    }
    s.heavies += heavy;
    s.lights += !heavy;
  }
  return s;
}

// Merges the lights [a, a_end) with the heavies [b, b_end) (see the file comment): in the
// order of Vose's sweep, light a comes before heavy b iff E(b) > D(a - 1) = dl[a]. A light
// gets prob p and the heavy current in the sweep as alias; a heavy the light l = a - 1
// during which it ran out of excess, prob 1 - (D(l) - E(b)), and the next heavy as alias
// (prob 1 and itself if it never ran out, or is the last heavy). Selects, no data-dependent if.
template <typename T>
void merge(const T* w, double scale, const Lists& L, int64_t n_light, int64_t n_heavy,
           int64_t a, int64_t a_end, int64_t b, int64_t b_end, double* prob, int32_t* alias) {
  for (int64_t steps = (a_end - a) + (b_end - b); steps > 0; --steps) {
    const double before = L.dl[a], e = L.eh[b];  // eh[n_heavy] = +inf
    const bool light = (a < a_end) & (e > before);
    const int32_t li = L.light[a], hi = L.heavy[b];  // light[n_light]: a valid index
    // Light: past the last heavy only by rounding (the p sum to N up to rounding).
    const int32_t light_alias = hi >= 0 ? hi : li;
    const bool ran_out = (e <= before) & (b + 1 < n_heavy);
    const double heavy_prob =
        ran_out ? std::min(1.0, std::max(0.0, 1.0 - (before - e))) : 1.0;
    const int32_t heavy_alias = ran_out ? L.heavy[b + 1] : hi;
    const int32_t item = light ? li : hi;
    prob[item] = light ? static_cast<double>(w[li]) * scale : heavy_prob;
    alias[item] = light ? light_alias : heavy_alias;
    a += light;
    b += !light;
  }
}

template <typename T>
void build_cpu(const T* w, int64_t n, double* prob, int32_t* alias) {
  const char* op = "alias_table_build";
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  const auto chunk_end = [&](int64_t c) { return std::min(n, (c + 1) * kChunk); };
  // Pass 1: the total weight (chunk sums added in chunk order: deterministic).
  std::vector<double> wsum(nchunks, 0.0);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double s[4] = {0.0, 0.0, 0.0, 0.0};  // four chains: the adds overlap
      int64_t i = c * kChunk;
      for (; i + 4 <= chunk_end(c); i += 4) {
        for (int k = 0; k < 4; ++k) s[k] += static_cast<double>(w[i + k]);
      }
      for (; i < chunk_end(c); ++i) s[0] += static_cast<double>(w[i]);
      wsum[c] = (s[0] + s[1]) + (s[2] + s[3]);
    }
  });
  double total = 0.0;
  for (double s : wsum) total += s;
  TORCH_CHECK(total > 0.0, op, ": all weights are zero, there is nothing to sample");
  const double scale = static_cast<double>(n) / total;

  // Pass 2: every chunk's counts and sums; their running totals are the chunks' offsets.
  std::vector<ChunkSums> sums(nchunks + 1);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      sums[c + 1] = sweep_chunk(w, c * kChunk, chunk_end(c), scale, nullptr, ChunkSums{});
    }
  });
  for (int64_t c = 0; c < nchunks; ++c) {  // sums[c]: totals of the chunks before c
    sums[c + 1].lights += sums[c].lights;
    sums[c + 1].heavies += sums[c].heavies;
    sums[c + 1].d += sums[c].d;
    sums[c + 1].e += sums[c].e;
  }
  // D(i) = offset + local sum: monotone, as every offset is its predecessor plus that
  // chunk's local sum, added the same way.
  const int64_t n_light = sums[nchunks].lights, n_heavy = sums[nchunks].heavies;
  // The lists live in this thread's scratch buffer.
  const size_t entry = sizeof(int32_t) + sizeof(double);
  const size_t light_bytes = (n_light + 1) * entry + 4;  // + 4: eh stays 8-byte aligned
  char* scratch = thread_scratch(light_bytes + (n_heavy + 1) * entry);
  double* const dl = reinterpret_cast<double*>(scratch);
  int32_t* const light = reinterpret_cast<int32_t*>(dl + n_light + 1);
  double* const eh = reinterpret_cast<double*>(scratch + light_bytes / 8 * 8);
  int32_t* const heavy = reinterpret_cast<int32_t*>(eh + n_heavy + 1);
  const Lists lists{light, dl, heavy, eh};
  dl[0] = 0.0;
  light[n_light] = 0;
  eh[n_heavy] = std::numeric_limits<double>::infinity();

  // Pass 3: the lists.
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      sweep_chunk(w, c * kChunk, chunk_end(c), scale, &lists, sums[c]);
    }
  });
  heavy[n_heavy] = n_heavy > 0 ? heavy[n_heavy - 1] : -1;  // a light's alias past the end

  // Pass 4: the merge, cut at the lights a0 < a1 < ...; the merge reaches light a0 with
  // every heavy of E <= D(a0 - 1) done and no other, which a binary search finds.
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(8, n_light / 4096));
  at::parallel_for(0, parts, 1, [&](int64_t pb, int64_t pe) {
    for (int64_t k = pb; k < pe; ++k) {
      const int64_t a0 = n_light * k / parts, a1 = n_light * (k + 1) / parts;
      const auto heavies_before = [&](int64_t a) {
        return std::upper_bound(eh, eh + n_heavy, dl[a]) - eh;
      };
      const int64_t b0 = heavies_before(a0);
      const int64_t b1 = k + 1 == parts ? n_heavy : heavies_before(a1);
      merge(w, scale, lists, n_light, n_heavy, a0, a1, b0, b1, prob, alias);
    }
  });
}

void check_table(const char* op, const at::Tensor& prob, const at::Tensor& alias) {
  TORCH_CHECK(prob.dim() == 1 && prob.numel() >= 1 && prob.scalar_type() == at::kDouble &&
                  prob.is_contiguous(),
              op, ": prob must be a contiguous non-empty 1-D float64 tensor, got ",
              prob.scalar_type(), " of shape ", prob.sizes());
  TORCH_CHECK(alias.scalar_type() == at::kInt && alias.sizes() == prob.sizes() &&
                  alias.is_contiguous(),
              op, ": alias must be a contiguous int32 tensor of shape ", prob.sizes(), ", got ",
              alias.scalar_type(), " of shape ", alias.sizes());
  TORCH_CHECK(alias.device() == prob.device(), op,
              ": alias and prob must be on the same device, got ", alias.device(), " and ",
              prob.device());
}

std::tuple<at::Tensor, at::Tensor> alias_table_build_cpu(const at::Tensor& weights_in) {
  const char* op = "alias_table_build";
  TORCH_CHECK(weights_in.dim() == 1 && weights_in.numel() >= 1, op,
              ": weights must be a non-empty 1-D tensor, got shape ", weights_in.sizes());
  TORCH_CHECK(weights_in.scalar_type() == at::kFloat || weights_in.scalar_type() == at::kDouble,
              op, ": weights must be float32 or float64, got ", weights_in.scalar_type());
  const int64_t n = weights_in.numel();
  TORCH_CHECK(n <= std::numeric_limits<int32_t>::max(), op,
              ": weights may have at most 2^31 - 1 entries, got ", n);
  const at::Tensor weights = weights_in.contiguous();
  at::Tensor prob = at::empty({n}, weights.options().dtype(at::kDouble));
  at::Tensor alias = at::empty({n}, weights.options().dtype(at::kInt));
  advise_huge_pages(prob.data_ptr(), n * sizeof(double));
  advise_huge_pages(alias.data_ptr(), n * sizeof(int32_t));
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "alias_table_build", [&] {
    check_weights(op, "weights", weights.data_ptr<scalar_t>(), n);
    build_cpu(weights.data_ptr<scalar_t>(), n, prob.data_ptr<double>(),
              alias.data_ptr<int32_t>());
  });
  return {prob, alias};
}

at::Tensor alias_table_sample_cpu(const at::Tensor& prob, const at::Tensor& alias,
                                  const at::Tensor& u) {
  const char* op = "alias_table_sample";
  check_table(op, prob, alias);
  TORCH_CHECK(u.scalar_type() == at::kDouble && u.dim() == 2 && u.size(0) == 2, op,
              ": u must be float64 of shape [2, n], got ", u.scalar_type(), " of shape ",
              u.sizes());
  TORCH_CHECK(u.device() == prob.device(), op, ": u must be on the table's device ",
              prob.device(), ", got ", u.device());
  const at::Tensor uc = u.contiguous();
  const int64_t n = uc.size(1), size = prob.numel();
  const double* up = uc.data_ptr<double>();
  for (int64_t i = 0; i < 2 * n; ++i) {
    TORCH_CHECK(up[i] >= 0.0 && up[i] < 1.0, op, ": u[", i / n, ", ", i % n, "] = ", up[i],
                " is not in [0, 1)");
  }
  at::Tensor out = at::empty({n}, prob.options().dtype(at::kLong));
  const double* pp = prob.data_ptr<double>();
  const int32_t* ap = alias.data_ptr<int32_t>();
  int64_t* o = out.data_ptr<int64_t>();
  const double dsize = static_cast<double>(size);
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      // u * size < size in exact arithmetic, but may round up to size.
      const int64_t k = std::min(static_cast<int64_t>(up[i] * dsize), size - 1);
      o[i] = up[n + i] < pp[k] ? k : static_cast<int64_t>(ap[k]);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(is_kernels, m) {
  m.def("alias_table_build(Tensor weights) -> (Tensor, Tensor)");
  m.def("alias_table_sample(Tensor prob, Tensor alias, Tensor u) -> Tensor");
}

TORCH_LIBRARY_IMPL(is_kernels, CPU, m) {
  m.impl("alias_table_build", &alias_table_build_cpu);
  m.impl("alias_table_sample", &alias_table_sample_cpu);
}

}  // namespace is_kernels
