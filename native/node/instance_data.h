// Per-environment state: the addon loads in the main thread and in worker_threads, and
// each Node environment needs its own constructors.
#pragma once

#include <napi.h>

namespace tee {

struct InstanceData {
  Napi::FunctionReference tensorConstructor;
  Napi::FunctionReference scriptModuleConstructor;
  Napi::FunctionReference nnModuleConstructor;
  // True while JS runs inside torch.tidy: the tensors made then are disposed when the scope
  // ends unless they escape it, so their memory is told to V8 only when they escape.
  bool memoryReportsDeferred = false;
};

inline InstanceData& GetInstanceData(Napi::Env env) { return *env.GetInstanceData<InstanceData>(); }

}  // namespace tee
