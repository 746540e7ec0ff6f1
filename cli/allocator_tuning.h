// The C allocator's settings for a training or sampling process.
//
// glibc's malloc serves blocks above a dynamic threshold (128 KiB at start) with
// mmap and returns them to the kernel on free, and trims the heap top above 128 KiB.
// A training step allocates and frees the same activation-sized blocks every step,
// so by default each step maps fresh pages and takes a page fault for every 4 KiB it
// touches: 9.5k minor faults per step for the default model, ~10 % of its CPU time in
// the kernel and malloc (perf, issue 12). Raising the mmap threshold to glibc's maximum
// (32 MiB on 64-bit) and the trim threshold to 1 GiB keeps freed blocks in the heap
// for reuse, as a caching allocator would: minor faults fall ~9x and training runs
// 1.1–1.2x faster (docs/BENCHMARKS.md). The cost is that memory freed below the top
// of the heap stays with the process (peak RSS grows by a few %).
// Blocks of 1 MiB and more (those above glibc's 32 MiB limit included) go to a caching
// allocator instead (trainer/caching_cpu_allocator.h), which reuses them across steps.
// DIFFTRAIN_MALLOC=system in the environment keeps glibc's defaults and LibTorch's allocator.
#pragma once

namespace difftrain::cli {

// Applies the settings above unless DIFFTRAIN_MALLOC=system; call first in main().
void tune_allocator();

}  // namespace difftrain::cli
