#include "async_work.h"

#include "errors.h"
#include "js_hooks.h"

namespace tee {
namespace {

class MethodWorker : public Napi::AsyncWorker {
 public:
  MethodWorker(Napi::Env env, std::unique_ptr<MethodCall> call)
      : Napi::AsyncWorker(env, "torch-early-exit method"), deferred_(Napi::Promise::Deferred::New(env)),
        call_(std::move(call)) {
    if (HasJsHooks(*call_->context.hooks)) js_ = std::make_unique<ThreadSafeJsCaller>(env);
    ++call_->state->inFlight;
  }

  // Runs on the main thread, so hooks holding JS references are released there.
  ~MethodWorker() override = default;

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      call_->Run(js_.get());
    } catch (...) {
      SetError(DescribeCurrentException());
    }
  }

  void OnOK() override {
    Settled();
    try {
      deferred_.Resolve(call_->ToJs(Env()));
    } catch (const Napi::Error& error) {
      deferred_.Reject(error.Value());
    }
  }

  void OnError(const Napi::Error& error) override {
    Settled();
    if (js_ && js_->error().IsSet()) {
      try {
        js_->error().ThrowIfSet(Env());
      } catch (const Napi::Error& hookError) {
        deferred_.Reject(hookError.Value());
        return;
      }
    }
    deferred_.Reject(Napi::Error::New(Env(), call_->method + ": " + error.Message()).Value());
  }

 private:
  void Settled() { --call_->state->inFlight; }

  Napi::Promise::Deferred deferred_;
  std::unique_ptr<MethodCall> call_;
  std::unique_ptr<ThreadSafeJsCaller> js_;
};

}  // namespace

Napi::Promise QueueMethodCall(Napi::Env env, std::unique_ptr<MethodCall> call) {
  auto* worker = new MethodWorker(env, std::move(call));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace tee
