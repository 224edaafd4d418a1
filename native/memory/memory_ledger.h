// What a forward call leaves allocated. A forward with gradients returns small tensors that
// keep the whole autograd graph (every saved activation) alive; V8 sees only the small
// tensor and would never hurry to collect it. The addon's CPU allocator records, for each
// allocation made while a ledger is open on the thread, the ledger it belongs to, so that
// the bytes a call left behind are known exactly and can be reported to V8 with its output.
#pragma once

#include <c10/util/intrusive_ptr.h>

#include <atomic>
#include <cstdint>

namespace tee {

class MemoryLedger : public c10::intrusive_ptr_target {
 public:
  // Bytes allocated under this ledger and not yet freed.
  int64_t LiveBytes() const { return live_.load(std::memory_order_relaxed); }
  void Add(int64_t bytes) { live_.fetch_add(bytes, std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> live_{0};
};

// Makes `ledger` the one that CPU allocations on this thread are charged to, for its lifetime.
class LedgerScope {
 public:
  explicit LedgerScope(MemoryLedger* ledger);
  ~LedgerScope();
  LedgerScope(const LedgerScope&) = delete;
  LedgerScope& operator=(const LedgerScope&) = delete;

 private:
  MemoryLedger* previous_;
};

// Makes the counting allocator LibTorch's CPU allocator (once per process); its blocks come
// from the CPU block cache (memory/cpu_block_cache.h).
void InstallCountingAllocator();

}  // namespace tee
