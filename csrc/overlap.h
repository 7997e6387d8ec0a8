// Memory overlap checks for the ops that write their arguments in place, shared by the CPU
// kernels of sum_tree.cpp and online_is.cpp. An input read while the op writes (indices that
// pick the slots to write, say) must not share memory with what is written: a write could
// turn an index that passed the checks into one out of range.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <initializer_list>

namespace is_kernels {

// A tensor argument and its name.
struct Arg {
  const char* name;
  const at::Tensor& tensor;
};

// Whether the bytes spanned by the elements of a and b intersect (false if either is empty or
// undefined).
// The span of a view runs from its first element to its last, so views that interleave
// without sharing an element also count as overlapping.
inline bool overlaps(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined() || !b.defined() || a.numel() == 0 || b.numel() == 0) return false;
  const auto span = [](const at::Tensor& t, uintptr_t* begin, uintptr_t* end) {
    int64_t last = 0;  // offset of the last element, in elements (strides are >= 0)
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    *begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    *end = *begin + static_cast<uintptr_t>((last + 1) * static_cast<int64_t>(t.itemsize()));
  };
  uintptr_t a0, a1, b0, b1;
  span(a, &a0, &a1);
  span(b, &b0, &b1);
  return a0 < b1 && b0 < a1;
}

// Throws unless the tensors in `written` share no memory with each other or with those in
// `read`; the error names both arguments.
inline void check_no_overlap(const char* op, std::initializer_list<Arg> written,
                             std::initializer_list<Arg> read) {
  for (auto w = written.begin(); w != written.end(); ++w) {
    for (auto o = w + 1; o != written.end(); ++o) {
      TORCH_CHECK(!overlaps(w->tensor, o->tensor), op, ": ", w->name, " and ", o->name,
                  " share memory; each must be a tensor of its own");
    }
    for (const Arg& r : read) {
      TORCH_CHECK(!overlaps(w->tensor, r.tensor), op, ": ", r.name, " shares memory with ",
                  w->name, ", which the op writes; pass a copy (", r.name, ".clone())");
    }
  }
}

}  // namespace is_kernels
