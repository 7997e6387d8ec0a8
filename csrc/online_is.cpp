// Online importance sampling ops (schemas + CPU kernels): one draw and one memory update of
// OnlineImportanceSampler (is_kernels/samplers/online.py) as one op each,
// so that a training step pays two op calls for the sampler instead of some thirty small
// tensor ops. Both build on the sum tree ops (csrc/sum_tree.cpp), called through the
// dispatcher. On CUDA the draw is one Triton kernel (is_kernels/ops/online_is_triton.py) and the
// update a composition of tensor ops and the Triton sum tree update (is_kernels/ops/online_is.py);
// the arithmetic is the same, step by step (q / total in float64, the rest in float32).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "overlap.h"

namespace is_kernels {
namespace {

at::Tensor sum_tree_sample(const at::Tensor& leaves, const at::Tensor& inner,
                           const at::Tensor& u) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("is_kernels::sum_tree_sample", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(leaves, inner, u);
}

void sum_tree_update(at::Tensor& leaves, at::Tensor& inner, const at::Tensor& indices,
                     const at::Tensor& values) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("is_kernels::sum_tree_update", "")
                             .typed<void(at::Tensor&, at::Tensor&, const at::Tensor&,
                                         const at::Tensor&)>();
  op.call(leaves, inner, indices, values);
}

void check_vector(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype,
                  int64_t size, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.scalar_type() == dtype && t.is_contiguous(), op, ": ", name,
              " must be a contiguous 1-D ", dtype, " tensor, got ", t.scalar_type(),
              " of shape ", t.sizes());
  TORCH_CHECK(size < 0 || t.numel() == size, op, ": ", name, " must have ", size,
              " entries, got ", t.numel());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(),
              ", got ", t.device());
}

// idx[t]: the sum tree's draw, or (with probability uniform_mix, or when the tree is empty:
// drawn = -1) a uniform pick among the active samples. weights[t] = 1 / (n p(idx[t])) with
// p = (1 - uniform_mix) q / total + uniform_mix / n over the n active samples (q / total
// reads 1 / n when total = 0), or 1 when not unbiased. u: float64 [3, b], rows: the tree's
// uniforms, the mixture coins, the uniform picks.
std::tuple<at::Tensor, at::Tensor> online_is_draw_cpu(const at::Tensor& leaves,
                                                      const at::Tensor& inner,
                                                      const at::Tensor& memory,
                                                      const at::Tensor& active_idx,
                                                      const at::Tensor& u, double uniform_mix,
                                                      bool unbiased) {
  const char* op = "online_is_draw";
  const int64_t num = leaves.numel();
  check_vector(op, "memory", memory, at::kFloat, num, leaves);
  check_vector(op, "active_idx", active_idx, at::kLong, -1, leaves);
  TORCH_CHECK(active_idx.numel() >= 1, op, ": active_idx must not be empty");
  TORCH_CHECK_VALUE(uniform_mix >= 0.0 && uniform_mix <= 1.0, op,
                    ": uniform_mix must be in [0, 1], got ", uniform_mix);
  TORCH_CHECK(u.dim() == 2 && u.size(0) == 3 && u.scalar_type() == at::kDouble &&
                  u.is_contiguous() && u.device() == leaves.device(),
              op, ": u must be a contiguous float64 [3, b] tensor on ", leaves.device(),
              ", got ", u.scalar_type(), " of shape ", u.sizes(), " on ", u.device());
  const at::Tensor drawn = sum_tree_sample(leaves, inner, u[0]);  // checks the tree and u[0]
  const int64_t b = u.size(1), n = active_idx.numel();
  const double* coin = u.data_ptr<double>() + b;
  const double* pick = coin + b;
  const int64_t* active = active_idx.data_ptr<int64_t>();
  const int64_t* tree_draw = drawn.data_ptr<int64_t>();
  at::Tensor idx = at::empty({b}, drawn.options());
  at::Tensor weights = at::empty({b}, memory.options());
  int64_t* out = idx.data_ptr<int64_t>();
  float* w = weights.data_ptr<float>();
  const float* q = memory.data_ptr<float>();
  // float32 steps as in ops/online_is.py's mixture, but for the total, which stays float64 (a
  // sum of float32 scores may exceed float32 max): q / total in float64, rounded to float32,
  // (1 - λ) * that + λ / n, then 1 / (n * p).
  const double total = inner.data_ptr<double>()[1];
  const float keep = static_cast<float>(1.0 - uniform_mix);
  const float floor_p = static_cast<float>(uniform_mix / static_cast<double>(n));
  const float empty_share = static_cast<float>(1.0 / static_cast<double>(n));
  const float fn = static_cast<float>(n);
  for (int64_t t = 0; t < b; ++t) {
    TORCH_CHECK(coin[t] >= 0.0 && coin[t] < 1.0 && pick[t] >= 0.0 && pick[t] < 1.0, op,
                ": u[1:, ", t, "] is not in [0, 1)");
    const int64_t k = std::min(static_cast<int64_t>(pick[t] * static_cast<double>(n)), n - 1);
    const bool uniform = coin[t] < uniform_mix || tree_draw[t] < 0;
    TORCH_CHECK_VALUE(!uniform || (active[k] >= 0 && active[k] < num), op,
                      ": active_idx must lie in [0, ", num, "), got active_idx[", k, "] = ",
                      active[k]);
    out[t] = uniform ? active[k] : tree_draw[t];
    if (unbiased) {
      const float share =
          total > 0.0 ? static_cast<float>(static_cast<double>(q[out[t]]) / total) : empty_share;
      w[t] = 1.0f / (fn * (keep * share + floor_p));
    } else {
      w[t] = 1.0f;
    }
  }
  return {idx, weights};
}

// q <- m·q + (1 - m)·s at idx (a sample's first score replaces its initial value), then the
// sum tree leaves at idx <- q (0 for inactive samples). With a duplicated index every entry
// is computed from the memory before the batch and the last one is kept. Everything is
// checked before anything is written (the sum tree update, which checks the tree, runs
// before memory and seen are written): on error the state is unchanged.
void online_is_update_cpu(at::Tensor& memory, at::Tensor& seen, const at::Tensor& active,
                          at::Tensor& leaves, at::Tensor& inner, const at::Tensor& idx,
                          const at::Tensor& scores, double momentum) {
  const char* op = "online_is_update";
  const int64_t num = leaves.numel();
  check_vector(op, "leaves", leaves, at::kFloat, -1, leaves);
  check_vector(op, "memory", memory, at::kFloat, num, leaves);
  check_vector(op, "seen", seen, at::kBool, num, leaves);
  check_vector(op, "active", active, at::kBool, num, leaves);
  check_vector(op, "idx", idx, at::kLong, -1, leaves);
  check_vector(op, "scores", scores, at::kFloat, idx.numel(), leaves);
  TORCH_CHECK_VALUE(momentum >= 0.0 && momentum < 1.0, op, ": momentum must be in [0, 1), got ",
                    momentum);
  // idx is read while the state is written (active and scores are read before).
  check_no_overlap(op, {{"memory", memory}, {"seen", seen}, {"leaves", leaves}, {"inner", inner}},
                   {{"idx", idx}});
  const int64_t k = idx.numel();
  const int64_t* ix = idx.data_ptr<int64_t>();
  const float* s = scores.data_ptr<float>();
  for (int64_t t = 0; t < k; ++t) {
    TORCH_CHECK_VALUE(ix[t] >= 0 && ix[t] < num, op, ": idx must lie in [0, ", num,
                      "), got idx[", t, "] = ", ix[t]);
    TORCH_CHECK_VALUE(std::isfinite(s[t]), op, ": scores must be finite, got scores[", t,
                      "] = ", s[t]);
    TORCH_CHECK_VALUE(s[t] >= 0.0f, op, ": scores must be non-negative, got scores[", t,
                      "] = ", s[t]);
  }
  float* q = memory.data_ptr<float>();
  bool* was_seen = seen.data_ptr<bool>();
  const bool* is_active = active.data_ptr<bool>();
  const float keep = static_cast<float>(momentum), take = static_cast<float>(1.0 - momentum);
  at::Tensor fresh = at::empty({k}, memory.options());
  float* f = fresh.data_ptr<float>();
  at::Tensor values = at::empty({k}, leaves.options());  // the leaves (the last entry wins)
  float* v = values.data_ptr<float>();
  for (int64_t t = 0; t < k; ++t) {
    f[t] = was_seen[ix[t]] ? keep * q[ix[t]] + take * s[t] : s[t];
    TORCH_CHECK_VALUE(std::isfinite(f[t]) && f[t] >= 0.0f, op, ": memory[", ix[t], "] = ",
                      q[ix[t]], " and scores[", t, "] = ", s[t], " give the memory value ", f[t],
                      ", which is not finite and >= 0 (memory must hold finite values >= 0)");
    v[t] = is_active[ix[t]] ? f[t] : 0.0f;
  }
  sum_tree_update(leaves, inner, idx, values);
  for (int64_t t = 0; t < k; ++t) {
    q[ix[t]] = f[t];
    was_seen[ix[t]] = true;
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(is_kernels, m) {
  m.def(
      "online_is_draw(Tensor leaves, Tensor inner, Tensor memory, Tensor active_idx, "
      "Tensor u, float uniform_mix, bool unbiased) -> (Tensor, Tensor)");
  m.def(
      "online_is_update(Tensor(a!) memory, Tensor(b!) seen, Tensor active, Tensor(c!) leaves, "
      "Tensor(d!) inner, Tensor idx, Tensor scores, float momentum) -> ()");
}

TORCH_LIBRARY_IMPL(is_kernels, CPU, m) {
  m.impl("online_is_draw", &online_is_draw_cpu);
  m.impl("online_is_update", &online_is_update_cpu);
}

}  // namespace is_kernels
