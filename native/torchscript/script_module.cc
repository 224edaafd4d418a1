#include "torchscript/script_module.h"

#include <caffe2/serialize/read_adapter_interface.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/tensorexpr_fuser.h>

#include <algorithm>
#include <cstring>
#include <sstream>
#include <utility>

#include "onednn/chains.h"
#include "torchscript/async_work.h"
#include "torchscript/batch_boundary.h"
#include "torchscript/batch_carry.h"
#include "tensor/dtypes.h"
#include "torchscript/graph_instrumentation.h"
#include "node/instance_data.h"
#include "hooks/js_hooks.h"
#include "nn/branch_graph.h"
#include "nn/nn_modules.h"
#include "tensor/tensor.h"
#include "node/values.h"

namespace tee {
namespace {

struct WrapArguments {
  std::shared_ptr<ModelState> state;
  torch::jit::Module module;
  std::string name;
};

std::string Qualify(const std::string& prefix, const std::string& name) {
  if (prefix.empty()) return name;
  return name.empty() ? prefix : prefix + "." + name;
}

template <typename List>
Napi::Array NamedTensors(Napi::Env env, const List& list) {
  Napi::Array array = Napi::Array::New(env);
  uint32_t i = 0;
  for (const auto& item : list) {
    Napi::Array pair = Napi::Array::New(env, 2);
    pair.Set(0u, Napi::String::New(env, item.name));
    pair.Set(1u, Tensor::Wrap(env, item.value));
    array.Set(i++, pair);
  }
  return array;
}

// A model file's bytes, already read and checked by the caller.
class BufferReader : public caffe2::serialize::ReadAdapterInterface {
 public:
  BufferReader(const char* data, size_t size) : data_(data), size_(size) {}
  size_t size() const override { return size_; }
  size_t read(uint64_t pos, void* buf, size_t n, const char* what = "") const override {
    if (pos >= size_) return 0;
    n = std::min<size_t>(n, size_ - pos);
    std::memcpy(buf, data_ + pos, n);
    return n;
  }

 private:
  const char* data_;
  size_t size_;
};

// 'chains': oneDNN primitive chains; true: optimize_for_inference (refused where it is known to
// crash); false: frozen only; undefined: the first of these that this build can run.
Optimization ParseOptimization(const Napi::Value& value) {
  if (value.IsUndefined()) return Optimization::kAuto;
  if (value.IsString()) return Optimization::kChains;
  return value.ToBoolean() ? Optimization::kOneDnn : Optimization::kFrozen;
}

Hook MakeHook(Napi::Env env, const Napi::Value& hook) {
  Hook made;
  if (hook.IsFunction()) {
    made.js = std::make_shared<Napi::FunctionReference>(Napi::Persistent(hook.As<Napi::Function>()));
  } else if (NnModule::IsNnModule(env, hook)) {
    torch::nn::AnyModule branch = NnModule::UnwrapModule(hook)->Get(env);
    made.parameters = branch.ptr()->parameters();
    for (const at::Tensor& buffer : branch.ptr()->buffers()) made.parameters.push_back(buffer);
    made.branch = [branch](const c10::IValue& output) mutable -> c10::IValue {
      if (!output.isTensor()) {
        throw std::runtime_error("an nn branch needs a Tensor output from the module it is attached to, got " +
                                 output.tagKind());
      }
      return branch.forward<at::Tensor>(output.toTensor());
    };
    made.insertInto = [branch](torch::jit::Graph& graph, torch::jit::Value* input) {
      return InsertBranchNodes(*branch.ptr(), graph, input);
    };
  } else if (ScriptModule::IsScriptModule(env, hook)) {
    torch::jit::Module branch = ScriptModule::Unwrap(hook.As<Napi::Object>())->Get(env);
    for (const at::Tensor& parameter : branch.parameters()) made.parameters.push_back(parameter);
    for (const at::Tensor& buffer : branch.buffers()) made.parameters.push_back(buffer);
    made.branch = [branch](const c10::IValue& output) mutable { return branch.forward({output}); };
  } else {
    ThrowTypeError(env, "a forward hook must be a function, an nn module or a ScriptModule");
  }
  return made;
}

}  // namespace

Napi::Function ScriptModule::Define(Napi::Env env) {
  return DefineClass(env, "NativeScriptModule",
                     {
                         TEE_METHOD(ScriptModule, "runMethod", RunMethod),
                         TEE_METHOD(ScriptModule, "runMethodAsync", RunMethodAsync),
                         TEE_METHOD(ScriptModule, "namedModules", NamedModules),
                         TEE_METHOD(ScriptModule, "namedChildren", NamedChildren),
                         TEE_METHOD(ScriptModule, "namedParameters", NamedParameters),
                         TEE_METHOD(ScriptModule, "namedBuffers", NamedBuffers),
                         TEE_METHOD(ScriptModule, "train", Train),
                         TEE_METHOD(ScriptModule, "isTraining", IsTraining),
                         TEE_METHOD(ScriptModule, "to", To),
                         TEE_METHOD(ScriptModule, "serialize", Serialize),
                         TEE_METHOD(ScriptModule, "methodNames", MethodNames),
                         TEE_METHOD(ScriptModule, "methodSchema", MethodSchema),
                         TEE_METHOD(ScriptModule, "typeName", TypeName),
                         TEE_METHOD(ScriptModule, "callSites", CallSites),
                         TEE_METHOD(ScriptModule, "carryProblem", CarryProblem),
                         TEE_METHOD(ScriptModule, "registerHook", RegisterHook),
                         TEE_METHOD(ScriptModule, "removeHook", RemoveHook),
                         TEE_METHOD(ScriptModule, "compileForInference", CompileForInference),
                         TEE_METHOD(ScriptModule, "dropInference", DropInference),
                         TEE_METHOD(ScriptModule, "optimizedCopy", OptimizedCopy),
                         TEE_METHOD(ScriptModule, "oneDnnChains", OneDnnChains),
                         TEE_METHOD(ScriptModule, "timeOneDnnChains", TimeOneDnnChains),
                         TEE_METHOD(ScriptModule, "dispose", Dispose),
                         TEE_METHOD(ScriptModule, "isDisposed", IsDisposed),
                         TEE_METHOD(ScriptModule, "programNodesRun", ProgramNodesRun),
                     });
}

Napi::Value ScriptModule::Wrap(Napi::Env env, std::shared_ptr<ModelState> state, const torch::jit::Module& module,
                               const std::string& qualifiedName) {
  WrapArguments arguments{std::move(state), module, qualifiedName};
  return GetInstanceData(env).scriptModuleConstructor.New({Napi::External<WrapArguments>::New(env, &arguments)});
}

bool ScriptModule::IsScriptModule(Napi::Env env, const Napi::Value& value) {
  return value.IsObject() &&
         value.As<Napi::Object>().InstanceOf(GetInstanceData(env).scriptModuleConstructor.Value());
}

ScriptModule::ScriptModule(const Napi::CallbackInfo& info) : GuardedWrap<ScriptModule>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) {
    ThrowTypeError(info.Env(), "NativeScriptModule cannot be constructed directly; use jit.load");
  }
  auto* arguments = info[0].As<Napi::External<WrapArguments>>().Data();
  state_ = arguments->state;
  module_ = arguments->module;
  name_ = arguments->name;
}

const torch::jit::Module& ScriptModule::Get(Napi::Env env) const {
  if (disposed_) ThrowError(env, "ScriptModule was disposed: it cannot be used after dispose()");
  return module_;
}

void ScriptModule::RequireIdle(Napi::Env env, const char* action) const {
  Get(env);
  if (state_->inFlight > 0) {
    ThrowError(env, std::string("cannot ") + action + " while " + std::to_string(state_->inFlight) +
                        " forwardAsync call(s) of this model are running; await them first");
  }
}

std::unique_ptr<MethodCall> ScriptModule::PrepareCall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[1].IsArray()) ThrowTypeError(env, "inputs must be an array");
  auto call = std::make_unique<MethodCall>(env, state_, Get(env), info[0].ToString(), info[1].As<Napi::Array>());
  call->SetStopRules(info[2]);
  if (info[3].ToBoolean()) call->UseInferenceModel(env);
  return call;
}

Napi::Value ScriptModule::RunMethod(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::unique_ptr<MethodCall> call = PrepareCall(info);
  DirectJsCaller js(env);
  try {
    call->Run(&js);
  } catch (...) {
    js.error().ThrowIfSet(env);
    ThrowError(env, call->method + ": " + DescribeCurrentException());
  }
  return call->ToJs(env);
}

Napi::Value ScriptModule::RunMethodAsync(const Napi::CallbackInfo& info) {
  return QueueMethodCall(info.Env(), PrepareCall(info), info[4]);
}

Napi::Value ScriptModule::NamedModules(const Napi::CallbackInfo& info) {
  return NamedModuleList(info.Env(), Get(info.Env()).named_modules());
}

Napi::Value ScriptModule::NamedChildren(const Napi::CallbackInfo& info) {
  return NamedModuleList(info.Env(), Get(info.Env()).named_children());
}

template <typename List>
Napi::Array ScriptModule::NamedModuleList(Napi::Env env, const List& list) const {
  Napi::Array array = Napi::Array::New(env);
  uint32_t i = 0;
  for (const auto& item : list) {
    Napi::Array pair = Napi::Array::New(env, 2);
    pair.Set(0u, Napi::String::New(env, item.name));
    pair.Set(1u, Wrap(env, state_, item.value, Qualify(name_, item.name)));
    array.Set(i++, pair);
  }
  return array;
}

Napi::Value ScriptModule::NamedParameters(const Napi::CallbackInfo& info) {
  return NamedTensors(info.Env(), Get(info.Env()).named_parameters(info[0].ToBoolean()));
}

Napi::Value ScriptModule::NamedBuffers(const Napi::CallbackInfo& info) {
  return NamedTensors(info.Env(), Get(info.Env()).named_buffers(info[0].ToBoolean()));
}

Napi::Value ScriptModule::Train(const Napi::CallbackInfo& info) {
  RequireIdle(info.Env(), "change train/eval mode");
  torch::jit::Module& module = const_cast<torch::jit::Module&>(Get(info.Env()));
  bool mode = info[0].ToBoolean();
  // Only a real change makes a compiled model stale: eval() on a model in eval mode is no change.
  for (const auto& inside : module.modules()) {
    if (inside.is_training() != mode) {
      state_->generation++;
      break;
    }
  }
  module.train(mode);
  return info.Env().Undefined();
}

Napi::Value ScriptModule::IsTraining(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), Get(info.Env()).is_training());
}

Napi::Value ScriptModule::To(const Napi::CallbackInfo& info) {
  RequireIdle(info.Env(), "move the model");
  const_cast<torch::jit::Module&>(Get(info.Env())).to(ParseDevice(info[0].ToString()));
  state_->generation++;
  return info.Env().Undefined();
}

// The bytes of torch.jit.save, made in memory: LibTorch's file writer writes over its
// target in place and aborts the process when a write fails, so the caller writes the
// bytes to a temporary file and renames it.
Napi::Value ScriptModule::Serialize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireIdle(env, "save the model");
  RequireTorchScript(env, "saved as TorchScript");
  std::ostringstream bytes;
  // The file gets the code as loaded: Python knows nothing of the tap operator.
  StripInstrumentation(state_->root);
  try {
    Get(env).save(bytes);
  } catch (...) {
    InstrumentModule(state_->root);
    throw;
  }
  InstrumentModule(state_->root);
  std::string data = bytes.str();
  return Napi::Buffer<char>::Copy(env, data.data(), data.size());
}

Napi::Value ScriptModule::MethodNames(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array names = Napi::Array::New(env);
  uint32_t i = 0;
  for (const auto& method : Get(env).get_methods()) names.Set(i++, Napi::String::New(env, method.name()));
  return names;
}

Napi::Value ScriptModule::MethodSchema(const Napi::CallbackInfo& info) {
  auto method = Get(info.Env()).get_method(info[0].ToString());
  return Napi::String::New(info.Env(), c10::toString(method.function().getSchema()));
}

Napi::Value ScriptModule::TypeName(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), Get(info.Env()).type()->name()->qualifiedName());
}

// [calls in one forward (-1: in a loop), whether samples can leave the batch after it].
Napi::Value ScriptModule::CallSites(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Get(env);
  tee::CallSites sites = AnalyzeCalls(state_->root, name_);
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Napi::Number::New(env, sites.count));
  result.Set(1u, Napi::Boolean::New(env, sites.boundary));
  return result;
}

// Why a compiled exit at this module could not let samples leave alone ("" when it could).
Napi::Value ScriptModule::CarryProblem(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Get(env);
  return Napi::String::New(env, CarryProblemAt(state_->root, name_));
}

Napi::Value ScriptModule::RegisterHook(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const torch::jit::Module& module = Get(env);
  bool isRoot = module._ivalue().get() == state_->root._ivalue().get();
  if (!isRoot && state_->calledTypes.count(module.type().get()) == 0) {
    ThrowError(env, "module '" + name_ + "' is never called through forward in the TorchScript code of this model " +
                        "(was it frozen, inlined or optimized for inference?), so a hook on it would never run");
  }
  Hook hook = MakeHook(env, info[0]);
  hook.target = module._ivalue();
  hook.module = name_;
  if (ScriptModule::IsScriptModule(env, info[0])) {
    const torch::jit::Module& branch = ScriptModule::Unwrap(info[0].As<Napi::Object>())->Get(env);
    for (const auto& inside : branch.modules()) {
      if (inside._ivalue().get() != hook.target.get()) continue;
      ThrowError(env, "cannot attach this branch to '" + name_ + "': the branch contains '" + name_ +
                          "' itself, so running it would reach its own hook again without end");
    }
  }
  return Napi::Number::New(env, static_cast<double>(state_->hooks.Add(std::move(hook))));
}

Napi::Value ScriptModule::RemoveHook(const Napi::CallbackInfo& info) {
  Get(info.Env());
  int64_t id = info[0].As<Napi::Number>().Int64Value();
  return Napi::Boolean::New(info.Env(), state_->hooks.Remove(id));
}

Napi::Value ScriptModule::CompileForInference(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireIdle(env, "compile the model for inference");
  if (module_._ivalue().get() != state_->root._ivalue().get()) ThrowError(env, "only the root module can be compiled for inference");
  if (!info[0].IsArray()) ThrowTypeError(env, "compileForInference(points: string[], optimize: boolean)");
  Napi::Array array = info[0].As<Napi::Array>();
  std::vector<std::string> points;
  for (uint32_t i = 0; i < array.Length(); ++i) points.push_back(array.Get(i).ToString());
  c10::NoGradGuard noGrad;
  state_->inference =
      tee::CompileForInference(state_->root, points, state_->hooks.Snapshot(), state_->generation, ParseOptimization(info[1]),
                               state_->keyedForInference);
  Napi::Array boundaries = Napi::Array::New(env, points.size());
  for (size_t i = 0; i < points.size(); ++i) boundaries.Set(i, Napi::Boolean::New(env, state_->inference->batchBoundaries[i]));
  Napi::Array problems = Napi::Array::New(env, points.size());
  for (size_t i = 0; i < points.size(); ++i) problems.Set(i, Napi::String::New(env, state_->inference->perSampleProblems[i]));
  Napi::Array result = Napi::Array::New(env, 3);
  result.Set(0u, boundaries);
  result.Set(1u, Napi::String::New(env, state_->inference->optimization));
  result.Set(2u, problems);
  return result;
}

Napi::Value ScriptModule::DropInference(const Napi::CallbackInfo& info) {
  RequireIdle(info.Env(), "drop the compiled model");
  state_->inference.reset();
  return info.Env().Undefined();
}

// A new model: this one frozen and optimized without exits, as torch.jit.optimize_for_inference.
Napi::Value ScriptModule::OptimizedCopy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireIdle(env, "compile the model for inference");
  if (state_->keyedForInference && module_._ivalue().get() != state_->root._ivalue().get()) {
    ThrowError(env, "only the root module of an exported program can be compiled for inference");
  }
  c10::NoGradGuard noGrad;
  auto state = std::make_shared<ModelState>();
  std::string applied;
  state->root = CompilePlainForInference(Get(env), ParseOptimization(info[0]), applied, state_->keyedForInference);
  state->compiledForInference = true;
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Wrap(env, state, state->root, ""));
  result.Set(1u, Napi::String::New(env, applied));
  return result;
}

// The forward graph the oneDNN chains are in: the compiled model's, or this module's own when
// optimizedCopy made it.
std::shared_ptr<torch::jit::Graph> ScriptModule::ChainGraph(Napi::Env env) {
  RequireIdle(env, "read the oneDNN chains");
  torch::jit::Module compiled = state_->inference ? state_->inference->module : Get(env);
  auto* function = dynamic_cast<torch::jit::GraphFunction*>(&compiled.get_method("forward").function());
  return function == nullptr ? nullptr : function->graph();
}

// Per chain: per input shape run so far, {shape, arenaBytes, steps: [description, runs, nanoseconds][]}.
Napi::Value ScriptModule::OneDnnChains(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<torch::jit::Graph> graph = ChainGraph(env);
  std::vector<std::vector<onednn::ChainShapeReport>> chains;
  if (graph) chains = onednn::ReportChains(*graph);
  Napi::Array result = Napi::Array::New(env, chains.size());
  for (size_t i = 0; i < chains.size(); ++i) {
    Napi::Array shapes = Napi::Array::New(env, chains[i].size());
    for (size_t j = 0; j < chains[i].size(); ++j) {
      const onednn::ChainShapeReport& report = chains[i][j];
      Napi::Object shape = Napi::Object::New(env);
      shape.Set("shape", report.shape);
      shape.Set("arenaBytes", Napi::Number::New(env, static_cast<double>(report.arenaBytes)));
      Napi::Array steps = Napi::Array::New(env, report.steps.size());
      for (size_t k = 0; k < report.steps.size(); ++k) {
        Napi::Array step = Napi::Array::New(env, 3);
        step.Set(0u, report.steps[k].description);
        step.Set(1u, Napi::Number::New(env, static_cast<double>(report.steps[k].runs)));
        step.Set(2u, Napi::Number::New(env, static_cast<double>(report.steps[k].nanoseconds)));
        steps.Set(k, step);
      }
      shape.Set("steps", steps);
      shapes.Set(j, shape);
    }
    result.Set(i, shapes);
  }
  return result;
}

Napi::Value ScriptModule::TimeOneDnnChains(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<torch::jit::Graph> graph = ChainGraph(env);
  if (graph) onednn::TimeChains(*graph, info[0].ToBoolean());
  return env.Undefined();
}

Napi::Value ScriptModule::Dispose(const Napi::CallbackInfo& info) {
  module_ = torch::jit::Module();
  state_.reset();
  disposed_ = true;
  return info.Env().Undefined();
}

void ScriptModule::RequireTorchScript(Napi::Env env, const char* action) const {
  if (state_->program) ThrowError(env, std::string("an exported program (torch.export) cannot be ") + action);
}

Napi::Value ScriptModule::ProgramNodesRun(const Napi::CallbackInfo& info) {
  Get(info.Env());
  return Napi::Number::New(info.Env(), state_->programNodesRun ? static_cast<double>(state_->programNodesRun->load()) : -1.0);
}

Napi::Value ScriptModule::IsDisposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), disposed_);
}

Napi::Value LoadScriptModule(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBuffer() || !info[1].IsString()) ThrowTypeError(env, "loadScriptModule(bytes: Buffer, name: string, device?)");
  Napi::Buffer<char> bytes = info[0].As<Napi::Buffer<char>>();
  std::string context = "cannot load TorchScript model '" + info[1].As<Napi::String>().Utf8Value() + "'";
  return Guard(env, context.c_str(), [&]() -> Napi::Value {
    c10::optional<c10::Device> device;
    if (!info[2].IsUndefined()) {
      if (!info[2].IsString()) ThrowTypeError(env, context + ": device must be a string such as 'cpu' or 'cuda:0'");
      device = ParseDevice(info[2].As<Napi::String>());
    }
    auto state = std::make_shared<ModelState>();
    // Read while the call lasts: the JS buffer cannot move or go away meanwhile.
    state->root = torch::jit::load(std::make_shared<BufferReader>(bytes.Data(), bytes.Length()), device);
    state->calledTypes = InstrumentModule(state->root);
    torch::jit::Module root = state->root;
    return ScriptModule::Wrap(env, std::move(state), root, "");
  });
}

Napi::Value OneDnnChainsProblem(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), onednn::ChainsProblem());
}

Napi::Value OneDnnInferenceProblem(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), OneDnnProblem());
}

Napi::Value SetTensorExprFuserEnabled(const Napi::CallbackInfo& info) {
  torch::jit::setTensorExprFuserEnabled(info[0].As<Napi::Boolean>().Value());
  return info.Env().Undefined();
}

Napi::Value TensorExprFuserEnabled(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), torch::jit::tensorExprFuserEnabled());
}

}  // namespace tee
