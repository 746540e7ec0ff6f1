// A caching allocator for LibTorch's large CPU tensors (issue 12).
//
// A training or sampling step allocates and frees the same activation-sized blocks
// every step. glibc serves every block above 32 MiB (its largest mmap threshold, set
// by cli/allocator_tuning) with a fresh mmap and unmaps it on free, so each step
// touches new pages and takes a page fault per 4 KiB: at the 32 px, base-64 model the
// attention scores alone are 33.5 MB per tensor, and a training step took 40 k minor
// faults (8 % of its CPU time in the kernel, clearing pages; perf). Like PyTorch's CUDA
// caching allocator, this keeps freed blocks of at least `min_block_bytes` and hands
// them back to the next request of about the same size (best fit, at most 1/8 larger),
// so a steady-state step reuses the previous step's memory and never returns to the
// kernel. Smaller blocks go to LibTorch's default allocator (glibc keeps those).
//
// At most `max_cached_bytes` of freed blocks are kept (DIFFTRAIN_CPU_CACHE_MIB, default
// 2048); a request that finds no memory first releases the cache and retries. Blocks are
// 64-byte aligned (c10::alloc_cpu), as LibTorch's own. DIFFTRAIN_MALLOC=system turns this
// off along with the malloc settings.
#pragma once

#include <c10/core/Allocator.h>
#include <torch/version.h>

#include <cstddef>
#include <cstdint>

namespace difftrain::trainer {

struct CpuBlockCacheStats {
  std::size_t cached_bytes = 0;   // freed blocks held for reuse
  std::uint64_t reused = 0;       // requests served from the cache
  std::uint64_t fresh = 0;        // requests that allocated new memory
};

class CachingCpuAllocator final : public c10::Allocator {
 public:
  CachingCpuAllocator(std::size_t min_block_bytes, std::size_t max_cached_bytes);
  ~CachingCpuAllocator() override;

#if TORCH_VERSION_MAJOR >= 2
  c10::DataPtr allocate(std::size_t n) override;
  void copy_data(void* dest, const void* src, std::size_t count) const override;
#else
  c10::DataPtr allocate(std::size_t n) const override;
#endif

  c10::DeleterFnPtr raw_deleter() const override { return &CachingCpuAllocator::release; }

  CpuBlockCacheStats stats() const;
  // Frees every cached block (memory in use is untouched).
  void release_cached() const;

  struct Impl;

 private:
  static void release(void* data);
  Impl* impl_;
  c10::DataPtr allocate_block(std::size_t n) const;
};

// Makes a process-wide CachingCpuAllocator LibTorch's CPU allocator, unless
// DIFFTRAIN_MALLOC=system. Call once, first in main(), before tensors exist. Returns it
// (nullptr when turned off); it lives until the process exits. Throws std::invalid_argument
// naming DIFFTRAIN_CPU_CACHE_MIB when that is not a whole number.
CachingCpuAllocator* install_caching_cpu_allocator();

}  // namespace difftrain::trainer
