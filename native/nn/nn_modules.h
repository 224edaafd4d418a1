// Branch modules built from JS (nn.Linear, nn.Sequential, ...) over LibTorch's C++ modules.
#pragma once

#include <napi.h>
#include <torch/nn.h>

#include "node/errors.h"

namespace tee {

class NnModule : public GuardedWrap<NnModule> {
 public:
  static Napi::Function Define(Napi::Env env);
  static bool IsNnModule(Napi::Env env, const Napi::Value& value);
  static NnModule* UnwrapModule(const Napi::Value& value);

  explicit NnModule(const Napi::CallbackInfo& info);

  torch::nn::AnyModule& Get(Napi::Env env);

 private:
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value NamedParameters(const Napi::CallbackInfo& info);
  Napi::Value NamedBuffers(const Napi::CallbackInfo& info);
  Napi::Value NamedChildren(const Napi::CallbackInfo& info);
  Napi::Value Train(const Napi::CallbackInfo& info);
  Napi::Value IsTraining(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value TypeName(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value IsDisposed(const Napi::CallbackInfo& info);

  torch::nn::AnyModule module_;
  bool disposed_ = false;
};

// createNnModule(kind, options, children) -> NnModule. Options carry every argument
// with PyTorch's defaults already applied by lib/torch/nn.ts.
Napi::Value CreateNnModule(const Napi::CallbackInfo& info);

}  // namespace tee
