// Calls any ATen operator by schema name through the dispatcher, so that the tensor
// operations of the JS API are one-line TypeScript wrappers instead of C++ bindings.
#pragma once

#include <napi.h>

namespace tee {

// callOp(name, overload, positionalArgs, keywordArgs?) -> result (an array when the
// operator returns several values).
Napi::Value CallOp(const Napi::CallbackInfo& info);

}  // namespace tee
