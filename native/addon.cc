// Registers the addon's classes and functions for each Node environment.
#ifdef TEE_WITH_GLOO
#include "distributed/process_group.h"  // first: see its note on <fcntl.h>
#include "distributed/gradient_reducer.h"
#endif

#include <napi.h>

#include "exported/exported_program.h"
#include "memory/cpu_block_cache.h"
#include "node/errors.h"
#include "node/instance_data.h"
#include "memory/memory_ledger.h"
#include "nn/nn_modules.h"
#include "tensor/ops.h"
#include "nn/optimizer_step.h"
#include "node/runtime.h"
#include "torchscript/script_module.h"
#include "tensor/serialization.h"
#include "tensor/tensor.h"

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
  exports.Set("loadExportedProgram", Napi::Function::New(env, LoadExportedProgram));
  exports.Set("oneDnnInferenceProblem", Napi::Function::New(env, OneDnnInferenceProblem));
  exports.Set("oneDnnChainsProblem", Napi::Function::New(env, OneDnnChainsProblem));
  exports.Set("setTensorExprFuserEnabled", Napi::Function::New(env, Guarded<SetTensorExprFuserEnabled>));
  exports.Set("tensorExprFuserEnabled", Napi::Function::New(env, TensorExprFuserEnabled));
  exports.Set("createNnModule", Napi::Function::New(env, CreateNnModule));
  exports.Set("sgdStep", Napi::Function::New(env, Guarded<SgdStep>));
  exports.Set("adamStep", Napi::Function::New(env, Guarded<AdamStep>));
  exports.Set("pickleSave", Napi::Function::New(env, Guarded<PickleSave>));
#ifdef TEE_WITH_GLOO
  exports.Set("createProcessGroup", Napi::Function::New(env, Guarded<CreateProcessGroup>));
  exports.Set("destroyProcessGroup", Napi::Function::New(env, Guarded<DestroyProcessGroup>));
  exports.Set("allReduce", Napi::Function::New(env, Guarded<AllReduce>));
  exports.Set("broadcast", Napi::Function::New(env, Guarded<Broadcast>));
  exports.Set("allGather", Napi::Function::New(env, Guarded<AllGather>));
  exports.Set("barrier", Napi::Function::New(env, Guarded<Barrier>));
  exports.Set("broadcastCoalesced", Napi::Function::New(env, Guarded<BroadcastCoalesced>));
  exports.Set("createGradientReducer", Napi::Function::New(env, Guarded<CreateGradientReducer>));
  exports.Set("reducerPrepare", Napi::Function::New(env, Guarded<ReducerPrepare>));
  exports.Set("reducerBuckets", Napi::Function::New(env, Guarded<ReducerBuckets>));
  exports.Set("reducerRemove", Napi::Function::New(env, Guarded<ReducerRemove>));
  exports.Set("builtWithGloo", Napi::Boolean::New(env, true));
#else
  exports.Set("builtWithGloo", Napi::Boolean::New(env, false));
#endif
  ExportRuntime(env, exports);
  return exports;
}

}  // namespace
}  // namespace tee

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return tee::Init(env, exports); }

NODE_API_MODULE(torch_early_exit, InitAddon)
