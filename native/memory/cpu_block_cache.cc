#include "memory/cpu_block_cache.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace tee {
namespace {

constexpr size_t kMinCachedBytes = size_t{64} << 10;

// The size class of a large block: `bytes` rounded up to a multiple of an eighth of its
// power of two.
size_t SizeClass(size_t bytes) {
  size_t power = size_t{1} << (63 - __builtin_clzll(bytes));
  size_t step = power / 8;
  return (bytes + step - 1) / step * step;
}

// The limit TEE_CPU_CACHE_MB asks for: -1 when it is not set, -2 when it is not a number.
int64_t LimitSetting() {
  const char* setting = std::getenv("TEE_CPU_CACHE_MB");
  if (setting == nullptr || *setting == '\0') return -1;
  char* end = nullptr;
  long long megabytes = std::strtoll(setting, &end, 10);
  if (*end != '\0' || megabytes < 0 || megabytes > (int64_t{1} << 40)) return -2;
  return static_cast<int64_t>(megabytes) << 20;
}

int64_t DefaultLimit() {
  int64_t setting = LimitSetting();
  if (setting >= 0) return setting;
  // A setting that is not a number turns the cache off; the addon refuses to load over it
  // (CpuCacheSettingProblem), so this is never what a user gets silently.
  if (setting == -2) return 0;
  long pages = sysconf(_SC_PHYS_PAGES);
  long pageSize = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || pageSize <= 0) return int64_t{1} << 30;
  return static_cast<int64_t>(pages) * pageSize / 4;
}

class BlockCache {
 public:
  BlockCache() : base_(c10::GetDefaultCPUAllocator()), limit_(DefaultLimit()) {}

  void* Allocate(size_t bytes) {
    if (limit_ == 0 || bytes < kMinCachedBytes) {
      void* block = RawAllocate(bytes);
      Count(static_cast<int64_t>(bytes), 0);
      return block;
    }
    size_t size = SizeClass(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = free_.find(size);
      if (found != free_.end() && !found->second.empty()) {
        void* block = found->second.back();
        found->second.pop_back();
        cached_ -= static_cast<int64_t>(size);
        hits_++;
        CountLocked(static_cast<int64_t>(bytes), 0);
        return block;
      }
      misses_++;
    }
    void* block = RawAllocate(size);
    Count(static_cast<int64_t>(bytes), static_cast<int64_t>(size));
    return block;
  }

  void Free(void* block, size_t bytes) {
    if (limit_ == 0 || bytes < kMinCachedBytes) {
      base_->raw_deallocate(block);
      Count(-static_cast<int64_t>(bytes), 0);
      return;
    }
    size_t size = SizeClass(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      CountLocked(-static_cast<int64_t>(bytes), 0);
      if (cached_ + static_cast<int64_t>(size) <= limit_) {
        free_[size].push_back(block);
        cached_ += static_cast<int64_t>(size);
        return;
      }
      releasedOverLimit_++;
      reserved_ -= static_cast<int64_t>(size);
    }
    base_->raw_deallocate(block);
  }

  int64_t Empty() {
    std::unordered_map<size_t, std::vector<void*>> blocks;
    int64_t released = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      released = cached_;
      reserved_ -= cached_;
      cached_ = 0;
    }
    for (auto& entry : blocks) {
      for (void* block : entry.second) base_->raw_deallocate(block);
    }
#ifdef __GLIBC__
    // Blocks glibc served from its heaps rather than from mmap go back to the system only
    // when it trims them.
    if (released > 0) malloc_trim(0);
#endif
    return released;
  }

  CpuCacheStats Stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {limit_ > 0, limit_, allocated_, peakAllocated_, cached_, reserved_, peakReserved_,
            hits_, misses_, releasedOverLimit_};
  }

  void ResetPeaks() {
    std::lock_guard<std::mutex> lock(mutex_);
    peakAllocated_ = allocated_;
    peakReserved_ = reserved_;
  }

 private:
  // When the system refuses memory, the cached blocks go back first and the allocation is
  // tried once more, as PyTorch's CUDA caching allocator does before it reports out of memory.
  void* RawAllocate(size_t bytes) {
    try {
      return base_->raw_allocate(bytes);
    } catch (const c10::Error&) {
      if (Empty() == 0) throw;
      return base_->raw_allocate(bytes);
    }
  }

  void Count(int64_t allocated, int64_t reserved) {
    std::lock_guard<std::mutex> lock(mutex_);
    CountLocked(allocated, reserved);
  }

  void CountLocked(int64_t allocated, int64_t reserved) {
    allocated_ += allocated;
    reserved_ += reserved;
    peakAllocated_ = std::max(peakAllocated_, allocated_);
    peakReserved_ = std::max(peakReserved_, reserved_);
  }

  c10::Allocator* const base_;
  const int64_t limit_;
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  int64_t cached_ = 0;
  int64_t allocated_ = 0;
  int64_t peakAllocated_ = 0;
  int64_t reserved_ = 0;
  int64_t peakReserved_ = 0;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
  int64_t releasedOverLimit_ = 0;
};

// Never destroyed: blocks may be freed by LibTorch until the process ends.
BlockCache& Cache() {
  static BlockCache* cache = new BlockCache();
  return *cache;
}

}  // namespace

void* CpuCacheAllocate(size_t bytes) { return Cache().Allocate(bytes); }
void CpuCacheFree(void* block, size_t bytes) { Cache().Free(block, bytes); }
std::string CpuCacheSettingProblem() {
  if (LimitSetting() != -2) return "";
  return std::string("TEE_CPU_CACHE_MB must be a whole number of megabytes (0 turns the CPU block cache off), not '") +
         std::getenv("TEE_CPU_CACHE_MB") + "'";
}

int64_t CpuCacheEmpty() { return Cache().Empty(); }
CpuCacheStats CpuCacheStatistics() { return Cache().Stats(); }
void CpuCacheResetPeaks() { Cache().ResetPeaks(); }

}  // namespace tee
