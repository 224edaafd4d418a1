// The two ways a forward reaches JS hooks: directly when it runs on the main thread,
// through a thread-safe function when it runs on a worker thread.
#pragma once

#include <napi.h>

#include <optional>

#include "hooks/forward_hooks.h"

namespace tee {

bool HasJsHooks(const HookMap& hooks);

// What a JS hook threw, kept to be rethrown as the very same JS error.
class PendingJsError {
 public:
  void Set(const Napi::Error& error);
  // Throws the kept JS error, if any (main thread only).
  void ThrowIfSet(Napi::Env env);
  bool IsSet() const { return error_.has_value(); }

 private:
  std::optional<Napi::ObjectReference> error_;
};

class DirectJsCaller : public JsHookCaller {
 public:
  explicit DirectJsCaller(Napi::Env env) : env_(env) {}
  void Call(const Hook& hook, const c10::IValue& inputs, const c10::IValue& output) override;
  PendingJsError& error() { return error_; }

 private:
  Napi::Env env_;
  PendingJsError error_;
};

// Blocks the worker thread until the main thread has run the hook.
class ThreadSafeJsCaller : public JsHookCaller {
 public:
  explicit ThreadSafeJsCaller(Napi::Env env);
  ~ThreadSafeJsCaller() override;
  void Call(const Hook& hook, const c10::IValue& inputs, const c10::IValue& output) override;
  // Read on the main thread once the worker has finished.
  PendingJsError& error() { return error_; }

 private:
  Napi::ThreadSafeFunction function_;
  PendingJsError error_;
};

}  // namespace tee
