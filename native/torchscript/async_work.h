// Runs a TorchScript method on a libuv worker thread and settles a Promise with it.
#pragma once

#include <napi.h>

#include <memory>

#include "torchscript/method_call.h"

namespace tee {

// Queues `call`; the returned Promise resolves to MethodCall::ToJs. `onSampleExit`, when a
// function, receives samples as they leave the batch (hooks/sample_release.h).
Napi::Promise QueueMethodCall(Napi::Env env, std::unique_ptr<MethodCall> call, Napi::Value onSampleExit);

}  // namespace tee
