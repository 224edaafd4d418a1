#include "tensor/ops.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <string>
#include <unordered_map>

#include "node/errors.h"
#include "node/values.h"

namespace tee {
namespace {

const c10::OperatorHandle& FindOperator(Napi::Env env, const std::string& name, const std::string& overload) {
  // Looking a schema up takes the dispatcher's lock; operators never unregister, so the
  // handles can be kept.
  static thread_local std::unordered_map<std::string, c10::OperatorHandle> cache;
  std::string key = overload.empty() ? name : name + "." + overload;
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  auto handle = c10::Dispatcher::singleton().findSchema({name, overload});
  if (!handle) ThrowError(env, "no operator " + key + " in this LibTorch");
  return cache.emplace(key, *handle).first->second;
}

// PyTorch accepts a single int where a schema says int[N] (kernel_size=3 means [3, 3]).
Napi::Value ExpandIntList(Napi::Env env, const c10::Argument& argument, const Napi::Value& value) {
  auto list = argument.type()->cast<c10::ListType>();
  if (!list || list->getElementType()->kind() != c10::TypeKind::IntType || !value.IsNumber()) return value;
  size_t count = argument.N().value_or(1);
  Napi::Array array = Napi::Array::New(env, count);
  for (size_t i = 0; i < count; ++i) array.Set(i, value);
  return array;
}

bool MentionsSymInt(const c10::TypePtr& type) {
  if (type->kind() == c10::TypeKind::SymIntType) return true;
  for (const c10::TypePtr& contained : type->containedTypes()) {
    if (MentionsSymInt(contained)) return true;
  }
  return false;
}

// The declared type names dtypes (ScalarType) that JS passes as strings, but kernels take
// SymInt arguments as plain ints: convert by the declared type except for SymInt.
const c10::TypePtr& ConversionType(const c10::Argument& argument) {
  return MentionsSymInt(argument.real_type()) ? argument.type() : argument.real_type();
}

}  // namespace

Napi::Value CallOp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>();
  std::string overload = info[1].As<Napi::String>();
  std::string label = overload.empty() ? name : name + "." + overload;
  return Guard(env, label.c_str(), [&]() -> Napi::Value {
    const c10::OperatorHandle& op = FindOperator(env, name, overload);
    const c10::FunctionSchema& schema = op.schema();
    Napi::Array positional = info[2].As<Napi::Array>();
    Napi::Object keywords = info.Length() > 3 && info[3].IsObject() ? info[3].As<Napi::Object>() : Napi::Object::New(env);
    if (positional.Length() > schema.arguments().size()) {
      ThrowTypeError(env, "too many arguments: " + schema.name() + " takes " +
                              std::to_string(schema.arguments().size()));
    }
    torch::jit::Stack stack;
    for (size_t i = 0; i < schema.arguments().size(); ++i) {
      const c10::Argument& argument = schema.arguments()[i];
      Napi::Value value = i < positional.Length() ? positional.Get(i) : env.Undefined();
      if (value.IsUndefined() && keywords.Has(argument.name())) value = keywords.Get(argument.name());
      if (value.IsUndefined()) {
        if (!argument.default_value()) ThrowTypeError(env, "missing argument '" + argument.name() + "'");
        stack.push_back(*argument.default_value());
        continue;
      }
      stack.push_back(ToIValue(ExpandIntList(env, argument, value), ConversionType(argument), "argument '" + argument.name() + "'"));
    }
    op.callBoxed(&stack);
    if (stack.size() == 1) return FromIValue(env, stack[0]);
    Napi::Array results = Napi::Array::New(env, stack.size());
    for (size_t i = 0; i < stack.size(); ++i) results.Set(i, FromIValue(env, stack[i]));
    return results;
  });
}

}  // namespace tee
