#include "hooks/js_hooks.h"

#include <future>
#include <stdexcept>
#include <string>

#include "node/values.h"

namespace tee {
namespace {

// Runs one JS hook on the main thread; returns the error text, empty when it succeeded.
std::string CallOnMainThread(Napi::Env env, const Hook& hook, const c10::IValue& inputs, const c10::IValue& output,
                             PendingJsError& pending) {
  Napi::HandleScope scope(env);
  std::string where = HookedModuleName(hook);
  Napi::Value result;
  try {
    result = hook.js->Call({FromIValue(env, inputs), FromIValue(env, output)});
  } catch (const Napi::Error& error) {
    pending.Set(error);
    return "the forward hook on " + where + " threw: " + error.Message();
  }
  if (!result.IsUndefined()) {
    return "the forward hook on " + where + " returned a value, but hooks on TorchScript models cannot replace a " +
           "module's output; return nothing from the hook";
  }
  return "";
}

}  // namespace

bool HasJsHooks(const HookMap& hooks) {
  for (const auto& entry : hooks) {
    for (const auto& hook : entry.second) {
      if (hook->js) return true;
    }
  }
  return false;
}

void PendingJsError::Set(const Napi::Error& error) {
  if (!error_) error_ = Napi::Persistent(error.Value());
}

void PendingJsError::ThrowIfSet(Napi::Env env) {
  if (!error_) return;
  Napi::Object value = error_->Value();
  error_.reset();
  throw Napi::Error(env, value);
}

void DirectJsCaller::Call(const Hook& hook, const c10::IValue& inputs, const c10::IValue& output) {
  std::string error = CallOnMainThread(env_, hook, inputs, output, error_);
  if (!error.empty()) throw std::runtime_error(error);
}

ThreadSafeJsCaller::ThreadSafeJsCaller(Napi::Env env)
    : function_(Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                              "torch-early-exit forward hook", 0, 1)) {}

ThreadSafeJsCaller::~ThreadSafeJsCaller() { function_.Release(); }

void ThreadSafeJsCaller::Call(const Hook& hook, const c10::IValue& inputs, const c10::IValue& output) {
  std::promise<std::string> done;
  std::future<std::string> result = done.get_future();
  napi_status status = function_.BlockingCall([&](Napi::Env env, Napi::Function) {
    try {
      done.set_value(CallOnMainThread(env, hook, inputs, output, error_));
    } catch (...) {
      done.set_value("a forward hook could not be called");
    }
  });
  if (status != napi_ok) throw std::runtime_error("the Node environment is shutting down; forward hook not called");
  std::string error = result.get();
  if (!error.empty()) throw std::runtime_error(error);
}

}  // namespace tee
