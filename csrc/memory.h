// Large buffers without a page fault per 4 KiB: on Linux, fresh large allocations fault in
// every page on first touch, which costs more than the O(N) passes that write them.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#ifdef __linux__
#include <sys/mman.h>
#endif
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#endif

namespace is_kernels {

// Asks the kernel for transparent huge pages on the 2 MiB-aligned part of [p, p + bytes)
// (a hint: a no-op where THP is off). Call before the memory is first touched.
inline void advise_huge_pages(void* p, size_t bytes) {
#ifdef __linux__
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

// A per-thread scratch buffer that only grows (kept between calls, so that repeated builds
// reuse pages already mapped). Holds the largest size requested on this thread. Under
// AddressSanitizer only the `bytes` asked for are addressable: an access past them is
// reported, which the buffer's rounded-up size would otherwise hide.
inline char* thread_scratch(size_t bytes) {
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<char, Free> buf;
  thread_local size_t capacity = 0;
  if (bytes > capacity) {
    constexpr size_t kAlign = size_t{1} << 21;
    const size_t size = (bytes + kAlign - 1) / kAlign * kAlign;
    buf.reset(static_cast<char*>(std::aligned_alloc(kAlign, size)));
    if (!buf) throw std::bad_alloc();
    advise_huge_pages(buf.get(), size);
    capacity = size;
  }
#ifdef __SANITIZE_ADDRESS__
  ASAN_UNPOISON_MEMORY_REGION(buf.get(), bytes);
  ASAN_POISON_MEMORY_REGION(buf.get() + bytes, capacity - bytes);
#endif
  return buf.get();
}

// Op outputs that are handed out again once nothing else references them. A fresh large
// tensor is page-faulted in (each page zeroed by the kernel) whenever malloc has returned
// the memory to the system since the last call, which glibc does or not depending on its
// state, at a cost comparable to the kernels that write it (32 MB: ~8000 faults and ~8 ms).
// Keeping two buffers serves both a loop that frees an op's output before calling it again
// (a training step's gradient) and one that still holds the previous output during the call
// (`table = AliasTable(w)` in a loop). An output still referenced anywhere (a view, .grad,
// a saved tensor) is never reused. Buffers of more than max_bytes are not kept. Use one per
// output of an op, as a function-local static that is never destroyed:
//   static auto* const buffer = new ReusableBuffer(bytes);
class ReusableBuffer {
 public:
  explicit ReusableBuffer(int64_t max_bytes) : max_bytes_(max_bytes) {}

  // An uninitialised contiguous tensor (like at::empty) on the CPU.
  at::Tensor take(at::IntArrayRef sizes, const at::TensorOptions& options) {
    const int64_t bytes =
        c10::multiply_integers(sizes) * static_cast<int64_t>(options.dtype().itemsize());
    if (bytes == 0 || bytes > max_bytes_) return at::empty(sizes, options);
    std::lock_guard<std::mutex> lock(mutex_);
    // use_count() == 1: only this holds it, and no other thread can take a reference but
    // through this function.
    const auto is_free = [](const c10::Storage& s) { return s && s.use_count() == 1; };
    for (const c10::Storage& s : kept_) {
      if (is_free(s) && static_cast<int64_t>(s.nbytes()) >= bytes) {
        return at::empty({0}, options).set_(s, 0, sizes);
      }
    }
    at::Tensor t = at::empty(sizes, options);
    // It replaces an empty or free buffer, else the one kept longer.
    int slot = older_;
    for (int k = 0; k < 2; ++k) {
      if (!kept_[k] || is_free(kept_[k])) slot = k;
    }
    kept_[slot] = t.storage();
    older_ = 1 - slot;
    return t;
  }

 private:
  const int64_t max_bytes_;
  std::mutex mutex_;
  c10::Storage kept_[2];
  int older_ = 0;  // the slot written first of the two
};

}  // namespace is_kernels
