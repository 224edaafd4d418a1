#include "torchscript/async_work.h"

#include "node/errors.h"
#include "hooks/js_hooks.h"
#include "hooks/sample_release.h"

namespace tee {
namespace {

class MethodWorker : public Napi::AsyncWorker {
 public:
  MethodWorker(Napi::Env env, std::unique_ptr<MethodCall> call, Napi::Value onSampleExit)
      : Napi::AsyncWorker(env, "torch-early-exit method"), deferred_(Napi::Promise::Deferred::New(env)),
        call_(std::move(call)) {
    if (HasJsHooks(*call_->context.hooks)) js_ = std::make_unique<ThreadSafeJsCaller>(env);
    if (onSampleExit.IsFunction()) {
      releaser_ = std::make_unique<SampleReleaser>(env, onSampleExit.As<Napi::Function>());
      SampleReleaser* releaser = releaser_.get();
      call_->context.onSampleExit = [releaser](const SampleExit& exit) { releaser->Release(exit); };
    }
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
    // Samples released early reach JS before the call's result does.
    if (releaser_) releaser_->Drain(Env());
    if (releaser_ && RejectIfThrown(releaser_->error())) return;
    try {
      deferred_.Resolve(call_->ToJs(Env()));
    } catch (const Napi::Error& error) {
      deferred_.Reject(error.Value());
    }
  }

  void OnError(const Napi::Error& error) override {
    Settled();
    if (releaser_) releaser_->Drain(Env());
    if (js_ && RejectIfThrown(js_->error())) return;
    deferred_.Reject(Napi::Error::New(Env(), call_->method + ": " + error.Message()).Value());
  }

 private:
  void Settled() { --call_->state->inFlight; }

  // Rejects the call with what a JS hook or callback threw, the very same error; true if it did.
  bool RejectIfThrown(PendingJsError& pending) {
    if (!pending.IsSet()) return false;
    try {
      pending.ThrowIfSet(Env());
    } catch (const Napi::Error& thrown) {
      deferred_.Reject(thrown.Value());
    }
    return true;
  }

  Napi::Promise::Deferred deferred_;
  std::unique_ptr<MethodCall> call_;
  std::unique_ptr<ThreadSafeJsCaller> js_;
  std::unique_ptr<SampleReleaser> releaser_;
};

}  // namespace

Napi::Promise QueueMethodCall(Napi::Env env, std::unique_ptr<MethodCall> call, Napi::Value onSampleExit) {
  auto* worker = new MethodWorker(env, std::move(call), onSampleExit);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace tee
