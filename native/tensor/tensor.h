// The JS Tensor object: owns one at::Tensor until disposed.
#pragma once

#include <ATen/ATen.h>
#include <napi.h>

#include "node/errors.h"

namespace tee {

class Tensor : public GuardedWrap<Tensor> {
 public:
  static Napi::Function Define(Napi::Env env);
  // A new JS Tensor owning `tensor`; an undefined at::Tensor becomes null.
  static Napi::Value Wrap(Napi::Env env, at::Tensor tensor);
  static bool IsTensor(Napi::Env env, const Napi::Value& value);
  // The tensor behind a JS Tensor; a TypeError for anything else or a disposed tensor.
  static const at::Tensor& FromJs(const Napi::Value& value, const char* what = "argument");
  // Tells V8 that the JS Tensor `value` keeps `bytes` of native memory alive (its autograd
  // graph), when that is more than its own data; no-op for anything but a Tensor.
  static void ReportRetained(const Napi::Value& value, int64_t bytes);
  // Turns deferred reporting on or off for this environment (torch.tidy, scope.ts).
  static Napi::Value SetMemoryReportsDeferred(const Napi::CallbackInfo& info);

  explicit Tensor(const Napi::CallbackInfo& info);
  ~Tensor() override;

 private:
  const at::Tensor& Get(Napi::Env env) const;
  void Reset(Napi::Env env);
  void Report(Napi::Env env, int64_t bytes);
  // Reports `bytes` now, or keeps them for ReportMemory when reports are deferred.
  void ReportOrDefer(Napi::Env env, int64_t bytes);

  Napi::Value Shape(const Napi::CallbackInfo& info);
  Napi::Value Dtype(const Napi::CallbackInfo& info);
  Napi::Value Device(const Napi::CallbackInfo& info);
  Napi::Value RequiresGrad(const Napi::CallbackInfo& info);
  Napi::Value SetRequiresGrad(const Napi::CallbackInfo& info);
  Napi::Value Grad(const Napi::CallbackInfo& info);
  Napi::Value SetGrad(const Napi::CallbackInfo& info);
  Napi::Value IsLeaf(const Napi::CallbackInfo& info);
  Napi::Value Data(const Napi::CallbackInfo& info);
  Napi::Value Bytes(const Napi::CallbackInfo& info);
  Napi::Value Item(const Napi::CallbackInfo& info);
  Napi::Value Backward(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value IsDisposed(const Napi::CallbackInfo& info);
  Napi::Value SameAs(const Napi::CallbackInfo& info);
  // The tensor escapes its tidy scope: tells V8 what was deferred.
  Napi::Value ReportMemory(const Napi::CallbackInfo& info);

  at::Tensor tensor_;
  bool disposed_ = false;
  int64_t reportedBytes_ = 0;
  int64_t deferredBytes_ = 0;
};

// Creates a tensor from a TypedArray copy: fromTypedArray(array, shape, dtype).
Napi::Value TensorFromTypedArray(const Napi::CallbackInfo& info);
// A 1-D tensor of `dtype` over a copy of the raw little-endian bytes of a Buffer:
// fromBytes(buffer, dtype). The storages of torch.save files are read this way.
Napi::Value TensorFromBytes(const Napi::CallbackInfo& info);

}  // namespace tee
