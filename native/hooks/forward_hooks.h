// Forward hooks on loaded TorchScript modules. TorchScript has no runtime hooks, so
// graph_instrumentation inserts a call of the `earlyexit::tap` operator after every
// submodule forward; the operator runs the hooks of the module object it is given,
// looked up in the context of the forward call running on this thread.
#pragma once

#include <ATen/core/ivalue.h>
#include <napi.h>

#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <optional>
#include <string>
#include <vector>

#include "hooks/stop_rules.h"

namespace torch::jit {
struct Graph;
struct Value;
}  // namespace torch::jit

namespace tee {

struct Hook {
  int64_t id = 0;
  // The qualified name of the hooked module, for error messages ('' is the root).
  std::string module;
  // Held so that the object whose address keys the hook cannot be freed and reused.
  c10::intrusive_ptr<c10::ivalue::Object> target;
  // A native branch: runs where the forward runs and its result is collected.
  std::function<c10::IValue(const c10::IValue& output)> branch;
  std::shared_ptr<void> branchOwner;
  // For a branch that can be written as graph nodes (nn/branch_graph.h): inserts them into a
  // compiled model's graph, reading the exit point's output, and returns their output, or
  // null where it cannot; the exit point then gets the branch's output instead of running it.
  std::function<torch::jit::Value*(torch::jit::Graph&, torch::jit::Value*)> insertInto;
  // The branch's parameters and buffers: a compiled model watches them for changes.
  std::vector<at::Tensor> parameters;
  // A JS function (inputs, output) => void, only ever touched on the main thread.
  std::shared_ptr<Napi::FunctionReference> js;
};

// How messages name a hook's module: 'layer1.0.relu2', or the root module.
std::string HookedModuleName(const Hook& hook);

using HookMap = std::unordered_map<const c10::ivalue::Object*, std::vector<std::shared_ptr<const Hook>>>;

// The module objects whose hooks the exit points of a compiled model run, by point index.
using ExitPointTable = std::vector<c10::intrusive_ptr<c10::ivalue::Object>>;

// The hooks of one model. Copy-on-write: a forward takes a snapshot when it starts, so
// adding or removing hooks never races a forward in flight on a worker thread.
class HookRegistry {
 public:
  int64_t Add(Hook hook);
  bool Remove(int64_t id);
  std::shared_ptr<const HookMap> Snapshot() const;

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const HookMap> hooks_ = std::make_shared<HookMap>();
  int64_t nextId_ = 1;
};

// Calls JS hooks for a forward: directly on the main thread, or from a worker thread
// through a thread-safe function.
class JsHookCaller {
 public:
  virtual ~JsHookCaller() = default;
  virtual void Call(const Hook& hook, const c10::IValue& inputs, const c10::IValue& output) = 0;
};

struct HookOutput {
  int64_t hookId;
  c10::IValue value;
};

// Samples that left the batch at a hook: their positions in the input and their rows of
// the hook's output.
struct SampleExit {
  int64_t hookId;
  at::Tensor indices;
  at::Tensor rows;
};

// The state of one forward call, seen by the tap operator on the thread that runs it.
struct ForwardContext {
  std::shared_ptr<const HookMap> hooks;
  JsHookCaller* js = nullptr;
  std::vector<HookOutput> outputs;
  // Hooks whose output may end the call (by throwing ForwardStopped), and what ended it.
  std::vector<StopRule> stopRules;
  PatienceState patience;
  std::optional<HookOutput> stoppedBy;
  // With per-sample rules: the samples that left early, and the input positions of the
  // samples still in the batch (undefined while all are).
  std::vector<SampleExit> sampleExits;
  at::Tensor remaining;
  // Told of each SampleExit as it happens (early release), when set.
  std::function<void(const SampleExit&)> onSampleExit;
  // Hooks running now on this call: a branch that reaches its own hook again would recurse
  // until the stack overflows.
  std::vector<const Hook*> running;
  // In a compiled model's forward: the module whose hooks each exit point runs.
  const ExitPointTable* exitPoints = nullptr;
  // Set by an interpreter that can shrink every live value holding the batch when samples
  // leave it (the staying rows, the batch size before); otherwise only the hooked module's
  // output shrinks.
  std::function<void(const at::Tensor& staying, int64_t before)> shrink;
  // In a compiled forward: the exit point whose hooks run now, and at each point where
  // samples left, the rows that stayed and the batch size before; the carries after that
  // point (earlyexit::carry) read them.
  struct Left {
    int64_t point;
    at::Tensor staying;
    int64_t before;
  };
  int64_t point = -1;
  std::vector<Left> leftAt;
};

// The context of the forward call running on this thread, or null.
ForwardContext* CurrentForwardContext();

// Thrown by a hook whose stop rule is met. Deliberately not a std::exception: the
// TorchScript interpreter catches std::exception to format a traceback of every frame,
// which costs more than the rest of a small forward; this passes through it untouched.
struct ForwardStopped {};

// Makes `context` the current one on this thread for its lifetime (nesting restores).
class ForwardScope {
 public:
  explicit ForwardScope(ForwardContext* context);
  ~ForwardScope();
  ForwardScope(const ForwardScope&) = delete;
  ForwardScope& operator=(const ForwardScope&) = delete;

 private:
  ForwardContext* previous_;
};

// Runs the hooks registered for `module` in the current context, as the tap does.
void RunHooks(const c10::IValue& module, const c10::IValue& inputs, const c10::IValue& output);

// The qualified names of the tap operator, and of the exit point operator that replaces
// the taps of exit points in a compiled model: earlyexit::exit_point(int point, Tensor
// output) -> Tensor, which runs the hooks of point `point` and returns the output the rest
// of the forward reads (fewer rows when samples left there). Its overload
// earlyexit::exit_point.ran(int point, Tensor output, Tensor branch) -> Tensor is given the
// branch's output, computed in the graph, where the compiler wrote the branch there.
extern const char* const kTapOperator;
extern const char* const kExitPointOperator;

// earlyexit::carry(int point, Tensor value) -> Tensor: after exit point `point` of a compiled
// model, a value made before the point and read after it that holds the batch along dim 0
// (a residual block's input, a padding mask) goes through a carry, which keeps the rows of
// the samples that stayed when some left there, and is the value itself otherwise.
extern const char* const kCarryOperator;

}  // namespace tee
