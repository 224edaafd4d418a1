#include "hooks/sample_release.h"

#include <c10/core/InferenceMode.h>

#include <deque>
#include <mutex>
#include <vector>

#include "tensor/tensor.h"

namespace tee {
namespace {

struct Released {
  int64_t hookId;
  std::vector<int64_t> positions;
  at::Tensor rows;
};

}  // namespace

struct SampleReleaser::State {
  std::mutex mutex;
  std::deque<Released> queue;
  // Touched on the main thread only.
  Napi::FunctionReference callback;
  PendingJsError error;

  void Drain(Napi::Env env) {
    for (;;) {
      std::deque<Released> ready;
      {
        std::lock_guard<std::mutex> lock(mutex);
        ready.swap(queue);
      }
      if (ready.empty()) return;
      for (Released& released : ready) {
        if (error.IsSet() || callback.IsEmpty()) continue;
        try {
          Napi::Array positions = Napi::Array::New(env, released.positions.size());
          for (size_t i = 0; i < released.positions.size(); ++i) {
            positions.Set(i, Napi::Number::New(env, static_cast<double>(released.positions[i])));
          }
          callback.Call({Napi::Number::New(env, static_cast<double>(released.hookId)), positions, Tensor::Wrap(env, released.rows)});
        } catch (const Napi::Error& thrown) {
          error.Set(thrown);
        }
      }
    }
  }
};

SampleReleaser::SampleReleaser(Napi::Env env, Napi::Function callback)
    : function_(Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                              "torch-early-exit sample release", 0, 1)),
      state_(std::make_shared<State>()) {
  state_->callback = Napi::Persistent(callback);
}

SampleReleaser::~SampleReleaser() {
  state_->callback.Reset();
  function_.Release();
}

void SampleReleaser::Release(const SampleExit& exit) {
  {
    // Ordinary tensors (a compiled forward runs under InferenceMode) that own their data.
    c10::InferenceMode ordinary(false);
    at::Tensor indices = exit.indices.to(at::kCPU, at::kLong).contiguous();
    Released released{exit.hookId,
                      std::vector<int64_t>(indices.data_ptr<int64_t>(), indices.data_ptr<int64_t>() + indices.numel()),
                      exit.rows.clone()};
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->queue.push_back(std::move(released));
  }
  std::shared_ptr<State> state = state_;
  function_.NonBlockingCall([state](Napi::Env env, Napi::Function) {
    if (env != nullptr) state->Drain(env);
  });
}

void SampleReleaser::Drain(Napi::Env env) { state_->Drain(env); }

PendingJsError& SampleReleaser::error() { return state_->error; }

}  // namespace tee
