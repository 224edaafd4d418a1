// Per-environment state: the addon loads in the main thread and in worker_threads, and
// each Node environment needs its own constructors.
#pragma once

#include <napi.h>

namespace tee {

struct InstanceData {
  Napi::FunctionReference tensorConstructor;
  Napi::FunctionReference scriptModuleConstructor;
  Napi::FunctionReference nnModuleConstructor;
};

inline InstanceData& GetInstanceData(Napi::Env env) { return *env.GetInstanceData<InstanceData>(); }

}  // namespace tee
