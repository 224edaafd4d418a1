// Conversion between JS values and TorchScript IValues, guided by the declared type.
#pragma once

#include <ATen/core/ivalue.h>
#include <ATen/core/jit_type.h>
#include <napi.h>

namespace tee {

// Converts `value` to an IValue of `type`; throws a TypeError naming `what` and the
// expected type when the value does not fit.
c10::IValue ToIValue(const Napi::Value& value, const c10::TypePtr& type, const std::string& what);

// Converts an IValue to JS: tensors become Tensors, lists and tuples arrays, dicts plain
// objects, None null.
Napi::Value FromIValue(Napi::Env env, const c10::IValue& value);

}  // namespace tee
