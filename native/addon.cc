// Registers the addon's classes and functions for each Node environment.
#include <napi.h>

#include "cpu_block_cache.h"
#include "errors.h"
#include "instance_data.h"
#include "memory_ledger.h"
#include "nn_modules.h"
#include "ops.h"
#include "optimizer_step.h"
#include "runtime.h"
#include "script_module.h"
#include "serialization.h"
#include "tensor.h"

namespace tee {
namespace {

// Functions called from JS directly, outside any ObjectWrap, get the same guard.
template <Napi::Value (*Function)(const Napi::CallbackInfo&)>
Napi::Value Guarded(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), nullptr, [&] { return Function(info); });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  std::string problem = CpuCacheSettingProblem();
  if (!problem.empty()) ThrowError(env, problem);
  InstallCountingAllocator();
  auto* data = new InstanceData();
  env.SetInstanceData(data);
  Napi::Function tensor = Tensor::Define(env);
  Napi::Function scriptModule = ScriptModule::Define(env);
  Napi::Function nnModule = NnModule::Define(env);
  data->tensorConstructor = Napi::Persistent(tensor);
  data->scriptModuleConstructor = Napi::Persistent(scriptModule);
  data->nnModuleConstructor = Napi::Persistent(nnModule);
  exports.Set("NativeTensor", tensor);
  exports.Set("NativeScriptModule", scriptModule);
  exports.Set("NativeNnModule", nnModule);
  exports.Set("fromTypedArray", Napi::Function::New(env, Guarded<TensorFromTypedArray>));
  exports.Set("fromBytes", Napi::Function::New(env, Guarded<TensorFromBytes>));
  exports.Set("callOp", Napi::Function::New(env, CallOp));
  exports.Set("setMemoryReportsDeferred", Napi::Function::New(env, Tensor::SetMemoryReportsDeferred));
  exports.Set("loadScriptModule", Napi::Function::New(env, LoadScriptModule));
  exports.Set("oneDnnInferenceProblem", Napi::Function::New(env, OneDnnInferenceProblem));
  exports.Set("createNnModule", Napi::Function::New(env, CreateNnModule));
  exports.Set("sgdStep", Napi::Function::New(env, Guarded<SgdStep>));
  exports.Set("adamStep", Napi::Function::New(env, Guarded<AdamStep>));
  exports.Set("pickleSave", Napi::Function::New(env, Guarded<PickleSave>));
  ExportRuntime(env, exports);
  return exports;
}

}  // namespace
}  // namespace tee

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return tee::Init(env, exports); }

NODE_API_MODULE(torch_early_exit, InitAddon)
