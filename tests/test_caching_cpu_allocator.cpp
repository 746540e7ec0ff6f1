// trainer/caching_cpu_allocator: blocks come back to requests of about their size and
// are never handed out twice at once, the cache stays under its cap, small requests
// are left to LibTorch's allocator, and a model step computes the same bits whether
// LibTorch allocates through it or not.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <c10/core/CPUAllocator.h>

#include <cstdint>
#include <thread>
#include <vector>

#include "trainer/caching_cpu_allocator.h"

namespace {

using difftrain::trainer::CachingCpuAllocator;
constexpr std::size_t MiB = std::size_t{1} << 20;

TEST(CachingCpuAllocator, ReusesFreedBlocksOfAboutTheSameSize) {
  CachingCpuAllocator allocator(MiB, 64 * MiB);
  void* first = nullptr;
  {
    auto block = allocator.allocate(2 * MiB);
    first = block.get();
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(first) % 64, 0u);
    std::memset(first, 1, 2 * MiB);  // the memory is really there
  }
  EXPECT_EQ(allocator.stats().cached_bytes, 2 * MiB);
  {
    auto again = allocator.allocate(2 * MiB - 4096);  // a little smaller: the same block
    EXPECT_EQ(again.get(), first);
    EXPECT_EQ(allocator.stats().cached_bytes, 0u);
    auto other = allocator.allocate(2 * MiB);  // while the first is in use: a new one
    EXPECT_NE(other.get(), first);
  }
  EXPECT_EQ(allocator.stats().cached_bytes, 4 * MiB);  // a reused block keeps its size
  {
    auto smaller = allocator.allocate(MiB + MiB / 2);  // 2 MiB would waste more than 1/8: new
    EXPECT_NE(smaller.get(), first);
    auto larger = allocator.allocate(3 * MiB);  // nothing cached is large enough
    EXPECT_NE(larger.get(), first);
  }
  const auto stats = allocator.stats();
  EXPECT_EQ(stats.reused, 1u);
  EXPECT_EQ(stats.fresh, 4u);
  allocator.release_cached();
  EXPECT_EQ(allocator.stats().cached_bytes, 0u);
}

TEST(CachingCpuAllocator, KeepsAtMostItsCapAndLeavesSmallBlocksToLibTorch) {
  CachingCpuAllocator allocator(MiB, 3 * MiB);
  {
    auto a = allocator.allocate(2 * MiB);
    auto b = allocator.allocate(2 * MiB);
    auto small = allocator.allocate(MiB - 1);
    EXPECT_NE(small.get(), nullptr);
  }
  const auto stats = allocator.stats();
  EXPECT_EQ(stats.cached_bytes, 2 * MiB);  // the second block would exceed 3 MiB: freed
  EXPECT_EQ(stats.fresh, 2u);              // the small one never counted
  auto zero = allocator.allocate(0);
  EXPECT_EQ(allocator.stats().fresh, 2u);
}

TEST(CachingCpuAllocator, ThreadsNeverShareABlock) {
  CachingCpuAllocator allocator(MiB, 256 * MiB);
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int id = 0; id < 4; ++id) {
    threads.emplace_back([&, id] {
      for (int i = 0; i < 300; ++i) {
        const std::size_t bytes = (1 + (i + id) % 3) * MiB;
        auto block = allocator.allocate(bytes);
        auto* p = static_cast<unsigned char*>(block.get());
        std::memset(p, id + 1, bytes);
        std::this_thread::yield();
        for (std::size_t k = 0; k < bytes; k += 4096) failures[id] += p[k] != id + 1;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int f : failures) EXPECT_EQ(f, 0);
  const auto stats = allocator.stats();
  EXPECT_EQ(stats.reused + stats.fresh, 1200u);
  EXPECT_GT(stats.reused, 1000u);
}

// A convolution + attention-sized softmax forward and backward, through LibTorch's own
// allocator and then through the cache (installed as LibTorch's CPU allocator): equal bits.
std::vector<torch::Tensor> model_step() {
  torch::manual_seed(3);
  auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 16, 3).padding(1));
  auto x = torch::randn({8, 16, 32, 32}, torch::requires_grad());
  auto h = conv(x).flatten(2);                                   // (8, 16, 1024)
  auto scores = torch::matmul(h.transpose(1, 2), h).softmax(-1);  // (8, 1024, 1024): 32 MiB
  auto loss = torch::matmul(h, scores).square().mean();
  loss.backward();
  return {loss.detach(), x.grad(), conv->weight.grad()};
}

TEST(CachingCpuAllocator, LibTorchComputesTheSameBitsThroughIt) {
  torch::set_num_threads(1);  // one summation order
  const auto reference = model_step();
  CachingCpuAllocator allocator(MiB, 1024 * MiB);
  std::vector<torch::Tensor> first, second;
  c10::SetCPUAllocator(&allocator, /*priority=*/100);
  first = model_step();
  const auto fresh_first = allocator.stats().fresh;
  second = model_step();  // mostly from the first step's freed blocks
  const auto fresh_second = allocator.stats().fresh - fresh_first;
  c10::SetCPUAllocator(c10::GetDefaultCPUAllocator(), /*priority=*/100);
  EXPECT_GT(allocator.stats().reused, 0u);
  EXPECT_LT(fresh_second, fresh_first);
  {  // LibTorch's raw interface (oneDNN scratchpads): the pointer alone frees the block
    void* raw = allocator.raw_allocate(4 * MiB);
    allocator.raw_deallocate(raw);
  }
  for (size_t i = 0; i < reference.size(); ++i) {
    EXPECT_TRUE(torch::equal(first[i], reference[i])) << i;
    EXPECT_TRUE(torch::equal(second[i], reference[i])) << i;
  }
  first.clear();
  second.clear();  // back to the allocator before it goes
}

}  // namespace
