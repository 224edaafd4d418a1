// Runs a TorchScript method on a libuv worker thread and settles a Promise with it.
#pragma once

#include <napi.h>

#include <memory>

#include "method_call.h"

namespace tee {

// Queues `call`; the returned Promise resolves to MethodCall::ToJs.
Napi::Promise QueueMethodCall(Napi::Env env, std::unique_ptr<MethodCall> call);

}  // namespace tee
