// The JS ScriptModule object: a loaded TorchScript model or one of its submodules.
#pragma once

#include <napi.h>
#include <torch/script.h>

#include <memory>
#include <string>

#include "node/errors.h"
#include "torchscript/method_call.h"

namespace tee {

class ScriptModule : public GuardedWrap<ScriptModule> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Value Wrap(Napi::Env env, std::shared_ptr<ModelState> state, const torch::jit::Module& module,
                          const std::string& qualifiedName);
  static bool IsScriptModule(Napi::Env env, const Napi::Value& value);

  explicit ScriptModule(const Napi::CallbackInfo& info);

  const torch::jit::Module& Get(Napi::Env env) const;

 private:
  Napi::Value RunMethod(const Napi::CallbackInfo& info);
  Napi::Value RunMethodAsync(const Napi::CallbackInfo& info);
  Napi::Value NamedModules(const Napi::CallbackInfo& info);
  Napi::Value NamedChildren(const Napi::CallbackInfo& info);
  Napi::Value NamedParameters(const Napi::CallbackInfo& info);
  Napi::Value NamedBuffers(const Napi::CallbackInfo& info);
  Napi::Value Train(const Napi::CallbackInfo& info);
  Napi::Value IsTraining(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value Serialize(const Napi::CallbackInfo& info);
  Napi::Value MethodNames(const Napi::CallbackInfo& info);
  Napi::Value MethodSchema(const Napi::CallbackInfo& info);
  Napi::Value TypeName(const Napi::CallbackInfo& info);
  Napi::Value CallSites(const Napi::CallbackInfo& info);
  Napi::Value CarryProblem(const Napi::CallbackInfo& info);
  Napi::Value RegisterHook(const Napi::CallbackInfo& info);
  Napi::Value RemoveHook(const Napi::CallbackInfo& info);
  Napi::Value CompileForInference(const Napi::CallbackInfo& info);
  Napi::Value DropInference(const Napi::CallbackInfo& info);
  Napi::Value OptimizedCopy(const Napi::CallbackInfo& info);
  Napi::Value OneDnnChains(const Napi::CallbackInfo& info);
  Napi::Value TimeOneDnnChains(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value IsDisposed(const Napi::CallbackInfo& info);
  // How many graph nodes an exported program has run since load (-1 for TorchScript).
  Napi::Value ProgramNodesRun(const Napi::CallbackInfo& info);

  // Refuses what only TorchScript models can do (save as TorchScript, compile), naming it.
  void RequireTorchScript(Napi::Env env, const char* action) const;

  // Mode and device changes must not race an async forward of the same model.
  void RequireIdle(Napi::Env env, const char* action) const;
  std::shared_ptr<torch::jit::Graph> ChainGraph(Napi::Env env);
  std::unique_ptr<MethodCall> PrepareCall(const Napi::CallbackInfo& info);
  // [[name, ScriptModule], ...] with qualified names kept for error messages.
  template <typename List>
  Napi::Array NamedModuleList(Napi::Env env, const List& list) const;

  std::shared_ptr<ModelState> state_;
  torch::jit::Module module_;
  std::string name_;
  bool disposed_ = false;
};

// loadScriptModule(bytes, name, device?) -> ScriptModule: `name` (the file) is for messages.
Napi::Value LoadScriptModule(const Napi::CallbackInfo& info);

// oneDnnChainsProblem() -> why this build cannot lower models to oneDNN chains, or ''.
Napi::Value OneDnnChainsProblem(const Napi::CallbackInfo& info);
// oneDnnInferenceProblem() -> why optimize_for_inference cannot run with this LibTorch, or ''.
Napi::Value OneDnnInferenceProblem(const Napi::CallbackInfo& info);

// setTensorExprFuserEnabled(enabled) / tensorExprFuserEnabled(): the graph executor's CPU fuser (NNC).
Napi::Value SetTensorExprFuserEnabled(const Napi::CallbackInfo& info);
Napi::Value TensorExprFuserEnabled(const Napi::CallbackInfo& info);

}  // namespace tee
