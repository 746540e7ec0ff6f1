#include "trainer/caching_cpu_allocator.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace difftrain::trainer {

struct CachingCpuAllocator::Impl {
  std::size_t min_block_bytes;
  std::size_t max_cached_bytes;
  std::multimap<std::size_t, void*> free_blocks;  // by size, for best fit
  CpuBlockCacheStats stats;
};

namespace {

// LibTorch frees some buffers by data pointer alone (Allocator::raw_deallocate, used by
// oneDNN's scratchpads), so a block's data pointer is its own context, and where it goes
// back is looked up here: every live block of every CachingCpuAllocator, one mutex.
struct LiveBlock {
  CachingCpuAllocator::Impl* owner;
  std::size_t size;
};
struct Registry {
  std::mutex mutex;
  std::unordered_map<void*, LiveBlock> live;
};
Registry& registry() {
  static auto* r = new Registry();  // never destroyed: blocks may be freed during static destruction
  return *r;
}

void free_blocks_locked(CachingCpuAllocator::Impl& impl) {
  for (auto& [size, data] : impl.free_blocks) c10::free_cpu(data);
  impl.free_blocks.clear();
  impl.stats.cached_bytes = 0;
}

}  // namespace

void CachingCpuAllocator::release(void* data) {
  Registry& r = registry();
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.live.find(data);
    if (it != r.live.end()) {
      const LiveBlock block = it->second;
      r.live.erase(it);
      if (block.owner->stats.cached_bytes + block.size <= block.owner->max_cached_bytes) {
        block.owner->free_blocks.emplace(block.size, data);
        block.owner->stats.cached_bytes += block.size;
        return;
      }
    }
  }
  c10::free_cpu(data);  // over the cap, or a small block LibTorch's allocator made (same deleter)
}

CachingCpuAllocator::CachingCpuAllocator(std::size_t min_block_bytes, std::size_t max_cached_bytes)
    : impl_(new Impl{min_block_bytes, max_cached_bytes, {}, {}}) {}

CachingCpuAllocator::~CachingCpuAllocator() {
  // Blocks still in use would come back to impl_: the process-wide allocator is never
  // destroyed, and tests destroy theirs after their tensors.
  release_cached();
  delete impl_;
}

c10::DataPtr CachingCpuAllocator::allocate_block(std::size_t n) const {
  if (n < impl_->min_block_bytes) return c10::GetDefaultCPUAllocator()->allocate(n);
  Registry& r = registry();
  void* data = nullptr;
  std::size_t size = n;
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = impl_->free_blocks.lower_bound(n);
    if (it != impl_->free_blocks.end() && it->first <= n + n / 8) {
      size = it->first;
      data = it->second;
      impl_->free_blocks.erase(it);
      impl_->stats.cached_bytes -= size;
      ++impl_->stats.reused;
      r.live.emplace(data, LiveBlock{impl_, size});
    } else {
      ++impl_->stats.fresh;
    }
  }
  if (data == nullptr) {
    try {
      data = c10::alloc_cpu(n);
    } catch (const c10::Error&) {
      release_cached();  // memory held for reuse is the first thing to give back
      data = c10::alloc_cpu(n);
    }
    std::lock_guard<std::mutex> lock(r.mutex);
    r.live.emplace(data, LiveBlock{impl_, size});
  }
  return c10::DataPtr(data, data, &CachingCpuAllocator::release, c10::Device(c10::DeviceType::CPU));
}

#if TORCH_VERSION_MAJOR >= 2
c10::DataPtr CachingCpuAllocator::allocate(std::size_t n) { return allocate_block(n); }
void CachingCpuAllocator::copy_data(void* dest, const void* src, std::size_t count) const {
  if (count > 0) std::memcpy(dest, src, count);
}
#else
c10::DataPtr CachingCpuAllocator::allocate(std::size_t n) const { return allocate_block(n); }
#endif

CpuBlockCacheStats CachingCpuAllocator::stats() const {
  std::lock_guard<std::mutex> lock(registry().mutex);
  return impl_->stats;
}

void CachingCpuAllocator::release_cached() const {
  std::lock_guard<std::mutex> lock(registry().mutex);
  free_blocks_locked(*impl_);
}

CachingCpuAllocator* install_caching_cpu_allocator() {
  const char* choice = std::getenv("DIFFTRAIN_MALLOC");
  if (choice != nullptr && std::strcmp(choice, "system") == 0) return nullptr;
  std::size_t max_cached_mib = 2048;
  if (const char* mib = std::getenv("DIFFTRAIN_CPU_CACHE_MIB"); mib != nullptr && *mib != '\0') {
    char* end = nullptr;
    const unsigned long long value = std::strtoull(mib, &end, 10);
    if (end == mib || *end != '\0' || value > (std::size_t{1} << 30)) {
      throw std::invalid_argument(std::string("environment variable DIFFTRAIN_CPU_CACHE_MIB='") + mib +
                                  "': expected a whole number of MiB (0 turns the CPU block cache off)");
    }
    max_cached_mib = static_cast<std::size_t>(value);
  }
  if (max_cached_mib == 0) return nullptr;
  // Never destroyed: tensors freed during static destruction still return their blocks here.
  static auto* allocator = new CachingCpuAllocator(std::size_t{1} << 20, max_cached_mib << 20);
  c10::SetCPUAllocator(allocator, /*priority=*/10);
  return allocator;
}

}  // namespace difftrain::trainer
