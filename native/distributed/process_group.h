// c10d process groups for JS: a TCPStore rendezvous and a Gloo process group made off the
// event loop, collectives queued on c10d's threads and settled as Promises, and the
// blocking coalesced broadcast that DistributedDataParallel uses for parameters and buffers.
// A group is an opaque handle (Napi::External) in JS.
#pragma once

// Gloo's headers include <fcntl.h>, whose GNU function tee() would clash with this addon's
// namespace: the first inclusion, here, names that function glibc_tee instead.
#define tee glibc_tee
#include <fcntl.h>
#undef tee

#include <napi.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <memory>
#include <string>

namespace tee {

struct ProcessGroupHandle {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  int rank = 0;
  int size = 1;
  std::string master;  // host:port, for messages
  std::chrono::milliseconds timeout{0};

  // "rank R of N": where an error happened.
  std::string Where() const;
  // The group, or an error saying it was destroyed.
  c10d::ProcessGroupGloo& Group() const;
};

// The group behind a JS handle; a TypeError for anything else.
std::shared_ptr<ProcessGroupHandle> ProcessGroupFromJs(const Napi::Value& value);

// Waits for `work`; a failure becomes an error that starts with `what` and the rank, and names
// the likely cause (a peer that left, a timeout).
void WaitOrThrow(const ProcessGroupHandle& handle, const c10::intrusive_ptr<c10d::Work>& work, const std::string& what);

// createProcessGroup(host, port, rank, worldSize, timeoutMs) → Promise<handle>
Napi::Value CreateProcessGroup(const Napi::CallbackInfo& info);
// destroyProcessGroup(handle): finishes the group's queued work and closes its connections.
Napi::Value DestroyProcessGroup(const Napi::CallbackInfo& info);
// allReduce(handle, tensor, op: 'sum' | 'avg' | 'max' | 'min' | 'product') → Promise<void>, in place
Napi::Value AllReduce(const Napi::CallbackInfo& info);
// broadcast(handle, tensor, src) → Promise<void>, in place
Napi::Value Broadcast(const Napi::CallbackInfo& info);
// allGather(handle, tensor) → Promise<Tensor[]>, one per rank
Napi::Value AllGather(const Napi::CallbackInfo& info);
// barrier(handle) → Promise<void>
Napi::Value Barrier(const Napi::CallbackInfo& info);
// broadcastCoalesced(handle, tensors, src): every tensor from `src`, one message per dtype,
// waited for (as DistributedDataParallel's constructor and forward do in PyTorch).
Napi::Value BroadcastCoalesced(const Napi::CallbackInfo& info);

}  // namespace tee
