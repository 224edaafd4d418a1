// Early release: samples that leave a batch at an exit are handed to JS at that moment,
// while the forward goes on with the rest on its worker thread. The worker queues them and
// wakes the main thread through a thread-safe function; the main thread delivers what is
// queued, and delivers anything left before the call's own result (Drain), so a sample is
// never released after the call that holds it has resolved. JS receives
// (hookId, inputPositions, exitRows) on the main thread.
#pragma once

#include <napi.h>

#include <memory>

#include "hooks/forward_hooks.h"
#include "hooks/js_hooks.h"

namespace tee {

class SampleReleaser {
 public:
  // `callback` is the JS function; made and released on the main thread.
  SampleReleaser(Napi::Env env, Napi::Function callback);
  ~SampleReleaser();
  SampleReleaser(const SampleReleaser&) = delete;
  SampleReleaser& operator=(const SampleReleaser&) = delete;

  // Called on the worker thread as samples leave; never blocks it. When the environment is
  // going away nothing is delivered (the call's result still carries every sample).
  void Release(const SampleExit& exit);

  // Delivers what is queued now (main thread); then what the JS callback threw, if anything,
  // is in error().
  void Drain(Napi::Env env);
  PendingJsError& error();

  struct State;

 private:
  Napi::ThreadSafeFunction function_;
  // Shared with the wake-ups in flight, which may run after this releaser is gone.
  std::shared_ptr<State> state_;
};

}  // namespace tee
