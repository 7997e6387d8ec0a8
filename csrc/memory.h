// Large buffers without a page fault per 4 KiB: on Linux, fresh large allocations fault in
// every page on first touch, which costs more than the O(N) passes that write them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#ifdef __linux__
#include <sys/mman.h>
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
// reuse pages already mapped). Holds the largest size requested on this thread.
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
  return buf.get();
}

}  // namespace is_kernels
