// Large CPU blocks kept for reuse. Every activation of a batch-64 training step is several
// MB; glibc serves each from a fresh mmap and unmaps it on free, so each step page-faults its
// whole working set again (how often depends on glibc's moving mmap threshold, so two runs
// of the same program differ 2-3x). The cache keeps freed blocks by size class and hands
// them out again, the way PyTorch's CUDA caching allocator does for GPU memory.
//
// Blocks of kMinCachedBytes and more are cached, rounded up to one of eight size classes per
// power of two (at most 12.5% waste); smaller ones go straight to LibTorch's allocator. The
// cached (free) bytes never exceed the limit: a block freed beyond it goes back to the
// system. TEE_CPU_CACHE_MB sets the limit (default a quarter of the machine's memory);
// TEE_CPU_CACHE_MB=0 turns the cache off.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace tee {

struct CpuCacheStats {
  bool enabled;
  int64_t limitBytes;
  // Bytes handed out and not yet freed (as asked, all sizes), and their peak.
  int64_t allocatedBytes;
  int64_t peakAllocatedBytes;
  // Free blocks held for reuse.
  int64_t cachedBytes;
  // Size-class bytes of the cached blocks in use plus the cached ones, and their peak.
  int64_t reservedBytes;
  int64_t peakReservedBytes;
  int64_t cacheHits;
  int64_t cacheMisses;
  // Blocks given back to the system because the cache was at its limit.
  int64_t releasedOverLimit;
};

// The CPU allocator's backing store; thread-safe. `bytes` at Free is what Allocate was asked.
void* CpuCacheAllocate(size_t bytes);
void CpuCacheFree(void* block, size_t bytes);

// Why TEE_CPU_CACHE_MB cannot be used, or "" when it can (or is not set).
std::string CpuCacheSettingProblem();

// Gives every cached block back to the system; returns the bytes released.
int64_t CpuCacheEmpty();
CpuCacheStats CpuCacheStatistics();
void CpuCacheResetPeaks();

}  // namespace tee
