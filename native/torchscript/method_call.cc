#include "torchscript/method_call.h"

#include <c10/core/GradMode.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <algorithm>

#include "node/errors.h"
#include "tensor/tensor.h"
#include "node/values.h"

namespace tee {
namespace {

// Tensors made under c10::InferenceMode refuse in-place changes and autograd outside it:
// what a compiled forward returns is copied into ordinary tensors, which costs little
// next to the forward (an exit's logits) and surprises no one later.
c10::IValue Ordinary(const c10::IValue& value) {
  if (value.isTensor()) {
    const at::Tensor& tensor = value.toTensor();
    return tensor.defined() && tensor.is_inference() ? c10::IValue(tensor.clone()) : value;
  }
  if (value.isTuple()) {
    std::vector<c10::IValue> elements;
    for (const c10::IValue& element : value.toTupleRef().elements()) elements.push_back(Ordinary(element));
    return c10::ivalue::Tuple::create(std::move(elements));
  }
  if (value.isTensorList()) {
    c10::List<at::Tensor> list;
    for (const at::Tensor& tensor : value.toTensorList()) list.push_back(Ordinary(tensor).toTensor());
    return list;
  }
  return value;
}

// The first Tensor in a JS result (a tensor, or arrays and objects holding them).
Napi::Value FirstTensor(Napi::Env env, const Napi::Value& value) {
  if (Tensor::IsTensor(env, value)) return value;
  if (!value.IsObject()) return Napi::Value();
  Napi::Object object = value.As<Napi::Object>();
  Napi::Array keys = object.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    Napi::Value found = FirstTensor(env, object.Get(keys.Get(i)));
    if (!found.IsEmpty()) return found;
  }
  return Napi::Value();
}

std::string MethodNames(const torch::jit::Module& module) {
  std::string names;
  for (const auto& method : module.get_methods()) names += (names.empty() ? "" : ", ") + method.name();
  return names;
}

}  // namespace

MethodCall::MethodCall(Napi::Env env, std::shared_ptr<ModelState> state_, torch::jit::Module module_,
                       std::string method_, const Napi::Array& args)
    : state(std::move(state_)), module(std::move(module_)), method(std::move(method_)),
      gradEnabled(c10::GradMode::is_enabled()) {
  auto found = module.find_method(method);
  if (!found) {
    ThrowError(env, "module of type " + module.type()->name()->qualifiedName() + " has no method '" + method +
                        "' (methods: " + MethodNames(module) + ")");
  }
  const c10::FunctionSchema& schema = found->function().getSchema();
  size_t expected = schema.arguments().size() - 1;  // without self
  if (args.Length() > expected) {
    ThrowTypeError(env, method + "() takes " + std::to_string(expected) + " input" + (expected == 1 ? "" : "s") +
                            " but " + std::to_string(args.Length()) + " were given (schema: " + schema.name() +
                            c10::toString(schema).substr(schema.name().size()) + ")");
  }
  for (size_t i = 0; i < expected; ++i) {
    const c10::Argument& argument = schema.arguments()[i + 1];
    Napi::Value value = i < args.Length() ? args.Get(i) : env.Undefined();
    if (value.IsUndefined()) {
      if (!argument.default_value()) {
        ThrowTypeError(env, method + "() is missing input '" + argument.name() + "' (" +
                                argument.type()->annotation_str() + ")");
      }
      inputs.push_back(*argument.default_value());
      continue;
    }
    inputs.push_back(ToIValue(value, argument.type(), method + "() input '" + argument.name() + "'"));
  }
  context.hooks = state->hooks.Snapshot();
}

void MethodCall::SetStopRules(const Napi::Value& rules) {
  if (rules.IsUndefined() || rules.IsNull()) return;
  Napi::Env env = rules.Env();
  if (!rules.IsArray()) ThrowTypeError(env, "stop rules must be an array of [hookId, kind, threshold]");
  Napi::Array array = rules.As<Napi::Array>();
  for (uint32_t i = 0; i < array.Length(); ++i) {
    Napi::Array rule = array.Get(i).As<Napi::Array>();
    StopRule parsed;
    parsed.hookId = rule.Get(0u).As<Napi::Number>().Int64Value();
    parsed.kind = ParseStopRuleKind(rule.Get(1u).ToString());
    parsed.threshold = rule.Get(2u).As<Napi::Number>().DoubleValue();
    parsed.perSample = rule.Length() > 3 && rule.Get(3u).ToBoolean();
    context.stopRules.push_back(parsed);
  }
}

void MethodCall::UseInferenceModel(Napi::Env env) {
  if (method != "forward" || module._ivalue().get() != state->root._ivalue().get()) {
    ThrowError(env, "only the root module's forward runs compiled for inference");
  }
  if (!state->inference) ThrowError(env, "the model was not compiled for inference: call optimizeForInference() first");
  std::string stale = state->inference->StaleReason(context.hooks, state->generation);
  if (!stale.empty()) {
    ThrowError(env, "the model compiled for inference is out of date: " + stale +
                        " since optimizeForInference(); call optimizeForInference() again");
  }
  inference = state->inference;
  context.exitPoints = &inference->points;
}

void MethodCall::RunCompiled() {
  {
    // No autograd bookkeeping at all (no version counters, no autograd dispatch). Needed, not
    // only cheaper: from LibTorch 2.14 (built with Vulkan, as Debian's is) aten::max_pool2d has
    // a backend kernel mapped to AutogradOther beside its CompositeImplicitAutograd one, so a
    // oneDNN tensor that reaches it through autograd dispatch fails an internal assert ("has
    // kernels registered to both CompositeImplicitAutograd and a backend mapped to
    // AutogradOther"); InferenceMode skips autograd dispatch, as PyTorch's message advises.
    c10::InferenceMode inferenceMode;
    try {
      result = inference ? const_cast<torch::jit::Module&>(inference->module).forward(inputs) : module.get_method(method)(inputs);
    } catch (const ForwardStopped&) {
      result = context.stoppedBy->value;
    }
  }
  for (HookOutput& output : context.outputs) {
    output.value = Ordinary(output.value);
    // A stopped call's result is its exit's output: the same tensor, converted once.
    if (context.stoppedBy && output.hookId == context.stoppedBy->hookId) context.stoppedBy->value = result = output.value;
  }
  if (!context.stoppedBy) result = Ordinary(result);
  for (SampleExit& exit : context.sampleExits) {
    exit.indices = Ordinary(exit.indices).toTensor();
    exit.rows = Ordinary(exit.rows).toTensor();
  }
  if (context.remaining.defined()) context.remaining = Ordinary(context.remaining).toTensor();
  // A compiled copy has no submodule calls left to tap: hooks on its root fire here, with
  // ordinary tensors, as in Run.
  if (!inference && method == "forward") RunHooks(module._ivalue(), c10::ivalue::Tuple::create(inputs), result);
}

void MethodCall::Run(JsHookCaller* js) {
  c10::AutoGradMode grad(gradEnabled);
  LedgerScope charged(ledger.get());
  context.js = js;
  ForwardScope scope(&context);
  if (inference || state->compiledForInference) return RunCompiled();
  // On CPU the graph executor's optimized plans (profiling runs, then autodiff subgraphs)
  // made a training step's backward 4-8% slower than eager autograd (ResNet-20, batch 64)
  // and gained nothing measurable in eval: CPU calls run in the plain interpreter, as under
  // torch.jit.optimized_execution(False). CUDA calls keep the executor's setting (its fusers
  // are for GPUs; not measured here). Compiled inference (above) is apart.
  bool onCuda = std::any_of(inputs.begin(), inputs.end(),
                            [](const c10::IValue& input) { return input.isTensor() && input.toTensor().is_cuda(); });
  torch::jit::GraphOptimizerEnabledGuard plainInterpreter(onCuda && torch::jit::getGraphExecutorOptimize());
  try {
    result = module.get_method(method)(inputs);
  } catch (const ForwardStopped&) {
    result = context.stoppedBy->value;
    return;
  }
  // The module a forward was called on has no tap in any graph: fire its own hooks here.
  if (method == "forward") RunHooks(module._ivalue(), c10::ivalue::Tuple::create(inputs), result);
}

Napi::Value MethodCall::ToJs(Napi::Env env) const {
  Napi::Array outputs = Napi::Array::New(env, context.outputs.size());
  for (size_t i = 0; i < context.outputs.size(); ++i) {
    Napi::Array pair = Napi::Array::New(env, 2);
    pair.Set(0u, Napi::Number::New(env, static_cast<double>(context.outputs[i].hookId)));
    pair.Set(1u, FromIValue(env, context.outputs[i].value));
    outputs.Set(i, pair);
  }
  Napi::Array sampleExits = Napi::Array::New(env, context.sampleExits.size());
  for (size_t i = 0; i < context.sampleExits.size(); ++i) {
    const SampleExit& exit = context.sampleExits[i];
    Napi::Array entry = Napi::Array::New(env, 3);
    entry.Set(0u, Napi::Number::New(env, static_cast<double>(exit.hookId)));
    entry.Set(1u, Tensor::Wrap(env, exit.indices));
    entry.Set(2u, Tensor::Wrap(env, exit.rows));
    sampleExits.Set(i, entry);
  }
  // A stopped call's output is its exit's output, already among the hook outputs.
  Napi::Value output = context.stoppedBy ? env.Null() : FromIValue(env, result);
  Napi::Value carrier = output;
  for (size_t i = 0; context.stoppedBy && i < context.outputs.size(); ++i) {
    if (context.outputs[i].hookId == context.stoppedBy->hookId) carrier = outputs.Get(i).As<Napi::Array>().Get(1u);
  }
  // The output carries the call's autograd graph: V8 is told its true weight, so that
  // outputs nobody disposes are collected before they exhaust memory.
  carrier = FirstTensor(env, carrier);
  if (!carrier.IsEmpty()) Tensor::ReportRetained(carrier, ledger->LiveBytes());
  Napi::Array all = Napi::Array::New(env, 5);
  all.Set(0u, output);
  all.Set(1u, outputs);
  all.Set(2u, context.stoppedBy ? Napi::Value(Napi::Number::New(env, static_cast<double>(context.stoppedBy->hookId)))
                                : env.Null());
  all.Set(3u, sampleExits);
  all.Set(4u, Tensor::Wrap(env, context.remaining));
  return all;
}

}  // namespace tee
