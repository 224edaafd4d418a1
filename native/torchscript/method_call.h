// One call of a TorchScript method with its hooks, shared by the sync and async paths.
#pragma once

#include <napi.h>
#include <torch/script.h>

#include <atomic>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "hooks/forward_hooks.h"
#include "torchscript/inference_compiler.h"
#include "memory/memory_ledger.h"

namespace tee {

struct ProgramGraph;

// A loaded model: the root module, its hooks and what instrumentation found.
struct ModelState {
  torch::jit::Module root;
  HookRegistry hooks;
  std::unordered_set<const c10::ClassType*> calledTypes;
  // Async calls queued and not yet settled. Only the main thread reads or writes it.
  int inFlight = 0;
  // Counts train/eval and device changes, which a compiled model cannot follow.
  uint64_t generation = 0;
  // The model compiled for inference with its exit points, once asked for.
  std::shared_ptr<const InferenceModel> inference;
  // This model is itself a copy compiled by optimize_for_inference (jit.optimizeForInference):
  // every call runs under c10::InferenceMode, as the exit-compiled forward does.
  bool compiledForInference = false;
  // An exported program (torch.export): `root` is its module tree, and its forward (held
  // here, since a class type does not own its methods) runs `program` in the interpreter.
  std::shared_ptr<ProgramGraph> program;
  std::shared_ptr<torch::jit::Function> programForward;
  // How many graph nodes the program has run since load.
  std::shared_ptr<std::atomic<int64_t>> programNodesRun;
  // How the inference compiler gets the module to freeze, when not from the TorchScript forward.
  KeyedForInference keyedForInference;
};

struct MethodCall {
  std::shared_ptr<ModelState> state;
  torch::jit::Module module;
  std::string method;
  std::vector<c10::IValue> inputs;
  bool gradEnabled = true;
  ForwardContext context;
  // Set when the call runs the model compiled for inference instead of the model itself.
  std::shared_ptr<const InferenceModel> inference;
  c10::IValue result;
  // What the call allocates and leaves alive (its outputs and their autograd graph).
  c10::intrusive_ptr<MemoryLedger> ledger = c10::make_intrusive<MemoryLedger>();

  // Converts JS arguments by the method's schema (on the main thread).
  MethodCall(Napi::Env env, std::shared_ptr<ModelState> state, torch::jit::Module module, std::string method,
             const Napi::Array& args);
  // Reads [[hookId, kind, threshold, perSample?], ...]: hooks whose output may end the
  // call, or with perSample let the samples that meet the rule leave the batch.
  void SetStopRules(const Napi::Value& rules);
  // Runs the forward of the compiled model instead; throws when there is none or it is stale.
  void UseInferenceModel(Napi::Env env);
  // Runs the method on the calling thread; JS hooks go through `js`.
  void Run(JsHookCaller* js);
  // Runs the compiled forward, or the method of a model that is itself compiled, under
  // c10::InferenceMode (part of Run).
  void RunCompiled();
  // [result, [[hookId, hookOutput], ...], stoppedByHookId | null,
  //  [[hookId, inputPositions, exitRows], ...], remainingPositions | null]
  Napi::Value ToJs(Napi::Env env) const;
};

}  // namespace tee
