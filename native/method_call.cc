#include "method_call.h"

#include <c10/core/GradMode.h>

#include "errors.h"
#include "values.h"

namespace tee {
namespace {

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

void MethodCall::Run(JsHookCaller* js) {
  c10::AutoGradMode grad(gradEnabled);
  context.js = js;
  ForwardScope scope(&context);
  result = module.get_method(method)(inputs);
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
  Napi::Array both = Napi::Array::New(env, 2);
  both.Set(0u, FromIValue(env, result));
  both.Set(1u, outputs);
  return both;
}

}  // namespace tee
