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
// Parallel build (Hübschle-Schneider & Sanders 2019, "sweeping" in chunks): the items are
// cut into chunks; the prefix sums are chunk offset + local sum; every chunk then sweeps its
// items with two cursors (for its lights, the current heavy; for its heavies, the current
// light), each positioned once by a binary search and then only moving forward.
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

#include "weights.h"

namespace is_kernels {
namespace {

template <typename T>
struct Prefix {
  const T* w;
  int64_t n;
  double scale;     // N / W
  const double* d;  // d[i] = D(i), inclusive prefix sum of the light deficits
  const double* e;  // e[i] = E(i), inclusive prefix sum of the heavy excesses

  double p(int64_t i) const { return static_cast<double>(w[i]) * scale; }
  bool heavy(int64_t i) const { return p(i) > 1.0; }
  double D(int64_t i) const { return i < 0 ? 0.0 : d[i]; }
  // First m with e[m] > x, or n.
  int64_t first_e_above(double x) const { return std::upper_bound(e, e + n, x) - e; }
  // First m with d[m] >= x, or n.
  int64_t first_d_at_least(double x) const { return std::lower_bound(d, d + n, x) - d; }
};

template <typename T>
void build_cpu(const T* w, int64_t n, double* prob, int32_t* alias) {
  const char* op = "alias_table_build";
  const int64_t nchunks =
      std::max<int64_t>(1, std::min<int64_t>(4 * at::get_num_threads(), n / 16384));
  const int64_t chunk = (n + nchunks - 1) / nchunks;
  // Pass 1: the total weight (chunk sums added in chunk order: deterministic).
  std::vector<double> wsum(nchunks, 0.0);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double s = 0.0;
      for (int64_t i = c * chunk, end = std::min(n, (c + 1) * chunk); i < end; ++i) s += w[i];
      wsum[c] = s;
    }
  });
  double total = 0.0;
  for (double s : wsum) total += s;
  TORCH_CHECK(total > 0.0, op, ": all weights are zero, there is nothing to sample");

  // Pass 2: prefix sums within every chunk; the first heavy of every chunk.
  const at::Tensor prefix = at::empty({2 * n}, at::TensorOptions().dtype(at::kDouble));
  double* const d = prefix.data_ptr<double>();
  double* const e = d + n;
  const Prefix<T> pre{w, n, static_cast<double>(n) / total, d, e};
  std::vector<int64_t> first_heavy(nchunks + 1, n);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double dl = 0.0, el = 0.0;
      for (int64_t i = c * chunk, end = std::min(n, (c + 1) * chunk); i < end; ++i) {
        const double p = pre.p(i);
        if (p > 1.0) {
          el += p - 1.0;
          if (first_heavy[c] == n) first_heavy[c] = i;
        } else {
          dl += 1.0 - p;
        }
        d[i] = dl;
        e[i] = el;
      }
    }
  });
  // Chunk offsets, then D(i) = d0[c] + local D(i): monotone, as every offset is its
  // predecessor plus that chunk's last local sum, added the same way.
  std::vector<double> d0(nchunks, 0.0), e0(nchunks, 0.0);
  for (int64_t c = 1; c < nchunks; ++c) {
    const int64_t last = std::min(n, c * chunk) - 1;
    d0[c] = d0[c - 1] + d[last];
    e0[c] = e0[c - 1] + e[last];
  }
  at::parallel_for(1, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      for (int64_t i = c * chunk, end = std::min(n, (c + 1) * chunk); i < end; ++i) {
        d[i] += d0[c];
        e[i] += e0[c];
      }
    }
  });
  // first_heavy[c]: the first heavy at or after the start of chunk c (n if none).
  for (int64_t c = nchunks - 1; c >= 0; --c) {
    if (first_heavy[c] == n) first_heavy[c] = first_heavy[c + 1];
  }
  int64_t last_heavy = -1;
  for (int64_t i = n - 1; i >= 0 && last_heavy < 0; --i) {
    if (pre.heavy(i)) last_heavy = i;
  }

  // Pass 3: every chunk sweeps its items.
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t begin = c * chunk, end = std::min(n, (c + 1) * chunk);
      int64_t cur_heavy = -1;  // for lights: first m with E(m) > D(i - 1)
      int64_t cur_light = -1;  // for heavies: first m with D(m) >= E(h)
      int64_t next = begin;    // a heavy's next heavy
      for (int64_t i = begin; i < end; ++i) {
        const double p = pre.p(i);
        if (p <= 1.0) {
          const double before = pre.D(i - 1);
          if (cur_heavy < 0) {
            cur_heavy = pre.first_e_above(before);
          } else {
            while (cur_heavy < n && e[cur_heavy] <= before) ++cur_heavy;
          }
          prob[i] = p;
          // Past the last heavy only by rounding (sum of p is N up to rounding).
          alias[i] = static_cast<int32_t>(cur_heavy < n ? cur_heavy
                                                        : (last_heavy >= 0 ? last_heavy : i));
        } else {
          const double eh = e[i];
          if (cur_light < 0) {
            cur_light = pre.first_d_at_least(eh);
          } else {
            while (cur_light < n && d[cur_light] < eh) ++cur_light;
          }
          if (next <= i) {
            next = i + 1;
            while (next < end && !pre.heavy(next)) ++next;
            if (next == end) next = first_heavy[c + 1];
          }
          if (next >= n || cur_light >= n) {
            prob[i] = 1.0;
            alias[i] = static_cast<int32_t>(i);
          } else {
            prob[i] = std::min(1.0, std::max(0.0, 1.0 - (d[cur_light] - eh)));
            alias[i] = static_cast<int32_t>(next);
          }
        }
      }
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
