#include "memory/memory_ledger.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/alignment.h>

#include <mutex>

#include "memory/cpu_block_cache.h"
#include "torch_compat.h"

namespace tee {
namespace {

thread_local MemoryLedger* currentLedger = nullptr;

// Each block starts with a header of one alignment unit, so the data keeps LibTorch's
// alignment and a block is still one pointer (data == context), as raw_allocate requires.
struct alignas(c10::gAlignment) BlockHeader {
  MemoryLedger* ledger;
  size_t bytes;
};
static_assert(sizeof(BlockHeader) == c10::gAlignment, "the header must keep the data aligned");

class CountingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) TEE_ALLOCATE_CONST override {
    auto* header = static_cast<BlockHeader*>(CpuCacheAllocate(bytes + sizeof(BlockHeader)));
    header->ledger = currentLedger;
    header->bytes = bytes;
    if (header->ledger != nullptr) {
      c10::raw::intrusive_ptr::incref(header->ledger);
      header->ledger->Add(static_cast<int64_t>(bytes));
    }
    void* data = header + 1;
    return {data, data, &Delete, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &Delete; }

  TEE_ALLOCATOR_COPY_DATA

 private:
  static void Delete(void* data) {
    if (data == nullptr) return;
    BlockHeader* header = static_cast<BlockHeader*>(data) - 1;
    if (header->ledger != nullptr) {
      header->ledger->Add(-static_cast<int64_t>(header->bytes));
      c10::raw::intrusive_ptr::decref(header->ledger);
    }
    CpuCacheFree(header, header->bytes + sizeof(BlockHeader));
  }
};

}  // namespace

LedgerScope::LedgerScope(MemoryLedger* ledger) : previous_(currentLedger) { currentLedger = ledger; }

LedgerScope::~LedgerScope() { currentLedger = previous_; }

void InstallCountingAllocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Never freed: blocks it handed out may be released at any time until the process ends.
    c10::SetCPUAllocator(new CountingAllocator(), /*priority=*/1);
  });
}

}  // namespace tee
