// Fused output-gradient ops (schemas + CPU kernels): loss, per-sample importance score
// ||dloss_i/dz_i||_2 and the gradient of the logits, from one pass over each row.
// The CUDA kernels of the same ops are Triton: is_kernels/ops/output_grad_triton.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "memory.h"
#include "vec_row.h"

namespace is_kernels {
namespace {

enum class Reduction { None, Mean, Sum };

Reduction parse_reduction(const std::string& op, c10::string_view reduction) {
  if (reduction == "mean") return Reduction::Mean;
  if (reduction == "sum") return Reduction::Sum;
  if (reduction == "none") return Reduction::None;
  TORCH_CHECK(false, op, ": reduction must be 'mean', 'sum' or 'none', got '",
              std::string(reduction), "'");
}

void check_float_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kDouble || d == at::kHalf || d == at::kBFloat16, op,
              ": ", name, " must be float32, float64, float16 or bfloat16, got ", d);
}

void check_ce_inputs(const char* op, const at::Tensor& logits, const at::Tensor& target,
                     int64_t ignore_index, double label_smoothing) {
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be 2-D [N, C], got shape ", logits.sizes());
  TORCH_CHECK(logits.size(1) >= 1, op, ": logits must have at least one class (C >= 1)");
  check_float_dtype(op, "logits", logits);
  TORCH_CHECK(target.scalar_type() == at::kLong, op, ": target must be int64 class indices, got ",
              target.scalar_type());
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), op,
              ": target must have shape [N] = [", logits.size(0), "], got ", target.sizes());
  TORCH_CHECK(target.device() == logits.device(), op,
              ": target and logits must be on the same device, got ", target.device(), " and ",
              logits.device());
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, op,
              ": label_smoothing must be in [0, 1], got ", label_smoothing);
  const int64_t C = logits.size(1);
  const int64_t* t = target.data_ptr<int64_t>();
  for (int64_t i = 0, n = target.numel(); i < n; ++i) {
    TORCH_CHECK(t[i] == ignore_index || (t[i] >= 0 && t[i] < C), op, ": target[", i,
                "] = ", t[i], " is out of range for ", C,
                " classes (expected 0 <= target < C, or target == ignore_index = ",
                ignore_index, ")");
  }
}

// The gradient buffer: the last two are kept and reused once free (memory.h), so that a
// training step does not page-fault a fresh logits-sized gradient (8192 x 1000 float32: 7.2
// against 15.8 ms per call when malloc has unmapped it). Buffers up to 256 MiB are kept.
at::Tensor new_grad(const at::Tensor& like) {
  static auto* const buffer = new ReusableBuffer(int64_t{256} << 20);
  return buffer->take(like.sizes(), like.options());
}

// Per-row results of one cross-entropy row.
template <typename T>
struct RowOut {
  T loss;
  T score;
};

// One row of softmax cross-entropy. z: the row's logits (length C). e: workspace of length C;
// on return, when write_grad, it holds scale * (softmax(z) - t). eps: label smoothing.
// ahead: a row to prefetch meanwhile, or null.
// Exponents are taken against m2 = max_{j!=y} z_j, so e_j <= 1 with max 1 and sums of e_j^2
// never underflow; with t = exp(-|z_y - m2|), 1 - p_y = S_{j!=y} / S is formed without
// cancellation: scores of well-learned rows (p_y -> 1) keep their relative precision
// (docs/algorithms.md, "The importance score").
template <typename T>
RowOut<T> ce_row(const T* z, T* e, int64_t C, int64_t y, T eps, T scale, bool write_grad,
                 const T* ahead) {
  if (z[y] == std::numeric_limits<T>::infinity()) {  // p_y = inf / inf: NaN, as in PyTorch
    const T nan = std::numeric_limits<T>::quiet_NaN();
    if (write_grad) std::fill(e, e + C, nan);
    return {nan, nan};
  }
  const T m2 = row_max_except(z, C, y);
  const T shift = std::isinf(m2) && m2 < 0 ? T(0) : m2;
  T s_ne, q_ne;
  exp_shifted_except(z, e, C, y, shift, &s_ne, &q_ne, ahead);
  const T delta = z[y] - m2;
  const T t = std::exp(-std::abs(delta));
  T a, nll, lse;  // p_j = a * e_j for j != y; nll = -log p_y; lse = log sum_j exp(z_j)
  if (delta >= T(0)) {
    a = t / (T(1) + s_ne * t);
    nll = std::log1p(s_ne * t);
    lse = z[y] + nll;
  } else {
    a = T(1) / (s_ne + t);
    nll = std::log(s_ne + t) - delta;
    lse = m2 + std::log(s_ne + t);  // not z_y + nll: finite when z_y = -inf
  }
  const T t_other = eps / T(C);
  const T d_y = (eps - t_other) - s_ne * a;  // p_y - t_y with t_y = 1 - eps + eps / C
  T loss = nll;
  T score = a * std::sqrt(q_ne + s_ne * s_ne);  // one-hot: sqrt(sum_{j!=y} p_j^2 + (1-p_y)^2)
  if (eps != T(0)) {  // the smoothed target is nonzero everywhere: the score needs e's pass
    loss = (T(1) - eps) * nll + eps * (lse - row_sum(z, C) / T(C));
    const T sq_other = affine_in_place(e, 0, y, a, t_other, scale) +
                       affine_in_place(e, y + 1, C, a, t_other, scale);
    e[y] = d_y * scale;
    score = std::sqrt(sq_other + d_y * d_y);
  } else if (write_grad) {  // one-hot: the gradient is p_j = a * e_j off the target
    scale_in_place(e, C, a * scale);
    e[y] = d_y * scale;
  }
  return {loss, score};
}

constexpr int64_t kAheadBytes = 1024;

template <typename scalar_t, typename T>
void ce_forward_cpu(const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index,
                    double label_smoothing, T grad_scale, at::Tensor& row_loss,
                    at::Tensor& score, at::Tensor* grad) {
  const int64_t N = logits.size(0), C = logits.size(1);
  const int64_t row_stride = logits.stride(0);
  const scalar_t* zp = logits.data_ptr<scalar_t>();
  const int64_t* tp = target.data_ptr<int64_t>();
  T* lp = row_loss.data_ptr<T>();
  float* sp = score.data_ptr<float>();
  scalar_t* gp = grad ? grad->data_ptr<scalar_t>() : nullptr;
  constexpr bool same = std::is_same_v<scalar_t, T>;
  const T eps = static_cast<T>(label_smoothing);
  const int64_t grain = std::max<int64_t>(1, 16384 / C);
  // While a row of at least kAheadBytes is exponentiated (from L1), the next row is
  // prefetched: its max pass would otherwise wait on memory (the hardware prefetcher alone
  // does not keep up; 8192 x 1000 float32: 0.63x the time for the score). Shorter rows are
  // left to the hardware prefetcher.
  const bool prefetch =
      same && row_stride * static_cast<int64_t>(sizeof(scalar_t)) >= kAheadBytes;
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> zbuf(same ? 0 : C), ebuf((same && gp) ? 0 : C);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t y = tp[i];
      scalar_t* g = gp ? gp + i * C : nullptr;
      if (y == ignore_index) {
        lp[i] = 0;
        sp[i] = 0;
        if (g) std::fill(g, g + C, scalar_t(0));
        continue;
      }
      const T* z;
      if constexpr (same) {
        z = zp + i * row_stride;
      } else {
        for (int64_t j = 0; j < C; ++j) zbuf[j] = static_cast<T>(zp[i * row_stride + j]);
        z = zbuf.data();
      }
      T* e = (same && g) ? reinterpret_cast<T*>(g) : ebuf.data();
      const T* ahead = nullptr;
      if (prefetch && i + 1 < end) ahead = z + row_stride;
      const RowOut<T> r = ce_row(z, e, C, y, eps, grad_scale, g != nullptr, ahead);
      lp[i] = r.loss;
      sp[i] = static_cast<float>(r.score);
      if (g && !same) {
        for (int64_t j = 0; j < C; ++j) g[j] = static_cast<scalar_t>(e[j]);
      }
    }
  });
}

// Reduces per-row losses (opmath dtype) to the requested reduction, in `dtype`:
// "mean" is sum / mean_divisor, "sum" is sum * sum_factor.
at::Tensor reduce_loss(const at::Tensor& row_loss, Reduction red, double mean_divisor,
                       double sum_factor, at::ScalarType dtype) {
  if (red == Reduction::None) return row_loss.to(dtype);
  at::Tensor total = row_loss.sum();
  total = red == Reduction::Mean ? total / mean_divisor : total * sum_factor;
  return total.to(dtype);
}

int64_t count_not_ignored(const at::Tensor& target, int64_t ignore_index) {
  return target.ne(ignore_index).sum().item<int64_t>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_with_score_cpu(
    const at::Tensor& logits_in, const at::Tensor& target_in, int64_t ignore_index,
    double label_smoothing, c10::string_view reduction, bool compute_grad) {
  const char* op = "cross_entropy_with_score";
  const Reduction red = parse_reduction(op, reduction);
  const at::Tensor target = target_in.contiguous();
  check_ce_inputs(op, logits_in, target, ignore_index, label_smoothing);
  const at::Tensor logits = logits_in.stride(-1) == 1 ? logits_in : logits_in.contiguous();
  const int64_t N = logits.size(0);
  const int64_t count = count_not_ignored(target, ignore_index);
  const bool is_double = logits.scalar_type() == at::kDouble;
  const auto opmath = is_double ? at::kDouble : at::kFloat;
  at::Tensor row_loss = at::empty({N}, logits.options().dtype(opmath));
  at::Tensor score = at::empty({N}, logits.options().dtype(at::kFloat));
  at::Tensor grad = compute_grad ? new_grad(logits)
                                 : at::empty({0}, logits.options());
  const double scale = red == Reduction::Mean ? 1.0 / static_cast<double>(count) : 1.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "cross_entropy_with_score", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    ce_forward_cpu<scalar_t, T>(logits, target, ignore_index, label_smoothing,
                                static_cast<T>(scale), row_loss, score,
                                compute_grad ? &grad : nullptr);
  });
  return {reduce_loss(row_loss, red, static_cast<double>(count), 1.0, logits.scalar_type()),
          score, grad};
}

at::Tensor output_grad_norm_cpu(const at::Tensor& logits, const at::Tensor& target,
                                int64_t ignore_index, double label_smoothing) {
  auto out = cross_entropy_with_score_cpu(logits, target, ignore_index, label_smoothing,
                                          "none", false);
  return std::get<1>(out);
}

// One row of cross-entropy against class probabilities q (length C), smoothed to
// t = (1 - eps) q + eps / C: loss = sum_j t_j (lse - z_j), gradient g = (sum_j t_j) p - t
// (p = softmax(z); sum_j t_j = 1 for a distribution). e: workspace of length C; on return,
// when write_grad, it holds scale * g. No target class to shift by: exponents are taken
// against max_j z_j, and the score ||g||_2 is exact to the rounding of p and t.
template <typename T>
RowOut<T> soft_ce_row(const T* z, const T* q, T* e, int64_t C, T eps, T scale,
                      bool write_grad) {
  const T m = row_max_except(z, C, C);  // y = C: no lane excluded
  const T shift = std::isinf(m) && m < 0 ? T(0) : m;
  T s, sq;
  exp_shifted_except(z, e, C, C, shift, &s, &sq, static_cast<const T*>(nullptr));
  const T lse = shift + std::log(s);
  const T t_other = eps / T(C);
  // Sequential sums in double: float32 ones would lose ~sqrt(C) ulps.
  double t_sum = 0, loss = 0;
  for (int64_t j = 0; j < C; ++j) {
    const T t = (T(1) - eps) * q[j] + t_other;
    t_sum += t;
    loss += t * (lse - z[j]);
  }
  const T a = static_cast<T>(t_sum / s);  // (sum_j t_j) p_j = a e_j
  double score_sq = 0;
  for (int64_t j = 0; j < C; ++j) {
    const T d = a * e[j] - ((T(1) - eps) * q[j] + t_other);
    score_sq += static_cast<double>(d) * d;
    if (write_grad) e[j] = d * scale;
  }
  return {static_cast<T>(loss), static_cast<T>(std::sqrt(score_sq))};
}

template <typename scalar_t, typename T>
void soft_ce_forward_cpu(const at::Tensor& logits, const at::Tensor& target,
                         double label_smoothing, T grad_scale, at::Tensor& row_loss,
                         at::Tensor& score, at::Tensor* grad) {
  const int64_t N = logits.size(0), C = logits.size(1);
  const scalar_t* zp = logits.data_ptr<scalar_t>();
  const scalar_t* qp = target.data_ptr<scalar_t>();
  T* lp = row_loss.data_ptr<T>();
  float* sp = score.data_ptr<float>();
  scalar_t* gp = grad ? grad->data_ptr<scalar_t>() : nullptr;
  constexpr bool same = std::is_same_v<scalar_t, T>;
  const T eps = static_cast<T>(label_smoothing);
  const int64_t grain = std::max<int64_t>(1, 16384 / C);
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> zbuf(same ? 0 : C), qbuf(same ? 0 : C), ebuf((same && gp) ? 0 : C);
    for (int64_t i = begin; i < end; ++i) {
      const T *z, *q;
      if constexpr (same) {
        z = zp + i * C;
        q = qp + i * C;
      } else {
        for (int64_t j = 0; j < C; ++j) zbuf[j] = static_cast<T>(zp[i * C + j]);
        for (int64_t j = 0; j < C; ++j) qbuf[j] = static_cast<T>(qp[i * C + j]);
        z = zbuf.data();
        q = qbuf.data();
      }
      scalar_t* g = gp ? gp + i * C : nullptr;
      T* e = (same && g) ? reinterpret_cast<T*>(g) : ebuf.data();
      const RowOut<T> r = soft_ce_row(z, q, e, C, eps, grad_scale, g != nullptr);
      lp[i] = r.loss;
      sp[i] = static_cast<float>(r.score);
      if (g && !same) {
        for (int64_t j = 0; j < C; ++j) g[j] = static_cast<scalar_t>(e[j]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_cross_entropy_with_score_cpu(
    const at::Tensor& logits_in, const at::Tensor& target_in, double label_smoothing,
    c10::string_view reduction, bool compute_grad) {
  const char* op = "soft_cross_entropy_with_score";
  const Reduction red = parse_reduction(op, reduction);
  TORCH_CHECK(logits_in.dim() == 2, op, ": logits must be 2-D [N, C], got shape ",
              logits_in.sizes());
  TORCH_CHECK(logits_in.size(1) >= 1, op, ": logits must have at least one class (C >= 1)");
  check_float_dtype(op, "logits", logits_in);
  TORCH_CHECK(target_in.sizes() == logits_in.sizes(), op,
              ": target (class probabilities) must have the shape of logits ",
              logits_in.sizes(), ", got ", target_in.sizes());
  TORCH_CHECK(target_in.scalar_type() == logits_in.scalar_type(), op,
              ": target (class probabilities) must have the dtype of logits (",
              logits_in.scalar_type(), "), got ", target_in.scalar_type());
  TORCH_CHECK(target_in.device() == logits_in.device(), op,
              ": target and logits must be on the same device, got ", target_in.device(),
              " and ", logits_in.device());
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, op,
              ": label_smoothing must be in [0, 1], got ", label_smoothing);
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const int64_t N = logits.size(0);
  const auto opmath = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor row_loss = at::empty({N}, logits.options().dtype(opmath));
  at::Tensor score = at::empty({N}, logits.options().dtype(at::kFloat));
  at::Tensor grad = compute_grad ? new_grad(logits) : at::empty({0}, logits.options());
  const double scale = red == Reduction::Mean ? 1.0 / static_cast<double>(N) : 1.0;
  const auto dtype = logits.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "soft_cross_entropy", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    soft_ce_forward_cpu<scalar_t, T>(logits, target, label_smoothing, static_cast<T>(scale),
                                     row_loss, score, compute_grad ? &grad : nullptr);
  });
  return {reduce_loss(row_loss, red, static_cast<double>(N), 1.0, logits.scalar_type()),
          score, grad};
}

template <typename scalar_t, typename T>
void mse_forward_cpu(const at::Tensor& pred, const at::Tensor& target, T grad_scale,
                     at::Tensor& row_loss, at::Tensor& score, at::Tensor* grad) {
  const int64_t N = pred.size(0);
  const int64_t D = pred.dim() == 2 ? pred.size(1) : 1;
  const scalar_t* zp = pred.data_ptr<scalar_t>();
  const scalar_t* yp = target.data_ptr<scalar_t>();
  T* lp = row_loss.data_ptr<T>();
  float* sp = score.data_ptr<float>();
  scalar_t* gp = grad ? grad->data_ptr<scalar_t>() : nullptr;
  const T two_over_d = T(2) / static_cast<T>(D);
  const int64_t grain = std::max<int64_t>(1, 16384 / D);
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T sq = 0;
      for (int64_t j = 0; j < D; ++j) {
        const T d = static_cast<T>(zp[i * D + j]) - static_cast<T>(yp[i * D + j]);
        sq += d * d;
        if (gp) gp[i * D + j] = static_cast<scalar_t>(two_over_d * grad_scale * d);
      }
      lp[i] = sq / static_cast<T>(D);
      sp[i] = static_cast<float>(two_over_d * std::sqrt(sq));
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mse_with_score_cpu(
    const at::Tensor& pred_in, const at::Tensor& target_in, c10::string_view reduction,
    bool compute_grad) {
  const char* op = "mse_with_score";
  const Reduction red = parse_reduction(op, reduction);
  TORCH_CHECK(pred_in.dim() == 1 || pred_in.dim() == 2, op,
              ": pred must be [N] or [N, D], got shape ", pred_in.sizes());
  TORCH_CHECK(pred_in.dim() == 1 || pred_in.size(1) >= 1, op,
              ": pred must have at least one feature (D >= 1)");
  check_float_dtype(op, "pred", pred_in);
  TORCH_CHECK(target_in.sizes() == pred_in.sizes(), op,
              ": target must have the shape of pred ", pred_in.sizes(), ", got ",
              target_in.sizes());
  TORCH_CHECK(target_in.scalar_type() == pred_in.scalar_type(), op,
              ": target must have the dtype of pred (", pred_in.scalar_type(), "), got ",
              target_in.scalar_type());
  TORCH_CHECK(target_in.device() == pred_in.device(), op,
              ": target and pred must be on the same device, got ", target_in.device(),
              " and ", pred_in.device());
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const int64_t N = pred.size(0);
  const int64_t D = pred.dim() == 2 ? pred.size(1) : 1;
  const auto opmath = pred.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor row_loss = at::empty({N}, pred.options().dtype(opmath));
  at::Tensor score = at::empty({N}, pred.options().dtype(at::kFloat));
  at::Tensor grad = compute_grad ? new_grad(pred)
                                 : at::empty({0}, pred.options());
  // d(reduced loss)/d(per-row loss): the per-row loss is already divided by D.
  double scale = 1.0;
  if (red == Reduction::Mean) scale = 1.0 / static_cast<double>(N);
  if (red == Reduction::Sum) scale = static_cast<double>(D);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "mse_with_score", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    mse_forward_cpu<scalar_t, T>(pred, target, static_cast<T>(scale), row_loss, score,
                                 compute_grad ? &grad : nullptr);
  });
  return {reduce_loss(row_loss, red, static_cast<double>(N), static_cast<double>(D),
                      pred.scalar_type()),
          score, grad};
}

}  // namespace

// Contract of cross_entropy_with_score and mse_with_score: (loss, score, grad), grad the
// gradient of the loss (as reduced) w.r.t. the input, [N, C] (empty when compute_grad is
// false). grad is donated to autograd: the op's registered backward scales it in place by the
// incoming gradient and returns it as the input's gradient, when that backward is eager, on
// plain tensors, without create_graph and with the graph freed after it (see
// is_kernels/ops/output_grad.py). A caller of the raw op that reads grad after such a
// backward reads the input's gradient, not the forward's grad; clone grad first to keep it.
// The public wrappers (cross_entropy_with_score, mse_with_score) never hand grad out.
TORCH_LIBRARY_FRAGMENT(is_kernels, m) {
  m.def(
      "cross_entropy_with_score(Tensor logits, Tensor target, int ignore_index, "
      "float label_smoothing, str reduction, bool compute_grad) -> (Tensor, Tensor, Tensor)");
  m.def(
      "soft_cross_entropy_with_score(Tensor logits, Tensor target, float label_smoothing, "
      "str reduction, bool compute_grad) -> (Tensor, Tensor, Tensor)");
  m.def(
      "mse_with_score(Tensor pred, Tensor target, str reduction, bool compute_grad) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "output_grad_norm(Tensor logits, Tensor target, int ignore_index, "
      "float label_smoothing) -> Tensor");
}

TORCH_LIBRARY_IMPL(is_kernels, CPU, m) {
  m.impl("cross_entropy_with_score", &cross_entropy_with_score_cpu);
  m.impl("soft_cross_entropy_with_score", &soft_cross_entropy_with_score_cpu);
  m.impl("mse_with_score", &mse_with_score_cpu);
  m.impl("output_grad_norm", &output_grad_norm_cpu);
}

}  // namespace is_kernels
