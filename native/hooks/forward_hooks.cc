#include "hooks/forward_hooks.h"

#include <c10/core/GradMode.h>
#include <torch/csrc/jit/runtime/custom_operator.h>

#include <stdexcept>

namespace tee {

const char* const kTapOperator = "earlyexit::tap";
const char* const kExitPointOperator = "earlyexit::exit_point";
const char* const kCarryOperator = "earlyexit::carry";

namespace {

thread_local ForwardContext* currentContext = nullptr;

// Takes the samples that meet a per-sample rule out of the batch: their exit rows are
// kept, and the hooked module's output shrinks in place to the other samples, so every
// later operation of the forward (which reads that same tensor) computes only those.
void LeaveEarly(ForwardContext& context, int64_t hookId, const at::Tensor& meeting, const c10::IValue& exitOutput,
                const c10::IValue& moduleOutput) {
  c10::NoGradGuard noGrad;
  at::Tensor leaving = meeting.nonzero().squeeze(1);
  at::Tensor staying = meeting.logical_not().nonzero().squeeze(1);
  if (!context.remaining.defined()) context.remaining = at::arange(meeting.size(0), at::kLong).to(meeting.device());
  context.sampleExits.push_back({hookId, context.remaining.index_select(0, leaving), exitOutput.toTensor().index_select(0, leaving)});
  if (context.onSampleExit && leaving.numel() > 0) context.onSampleExit(context.sampleExits.back());
  context.remaining = context.remaining.index_select(0, staying);
  if (context.patience.previousPrediction.defined()) {
    context.patience.previousPrediction = context.patience.previousPrediction.index_select(0, staying);
    context.patience.streak = context.patience.streak.index_select(0, staying);
  }
  at::Tensor output = moduleOutput.toTensor();
  int64_t before = output.size(0);
  output.set_(output.index_select(0, staying));
  if (context.shrink) context.shrink(staying, before);
  if (context.point >= 0) context.leftAt.push_back({context.point, staying, before});
}

}  // namespace

int64_t HookRegistry::Add(Hook hook) {
  std::lock_guard<std::mutex> lock(mutex_);
  hook.id = nextId_++;
  auto next = std::make_shared<HookMap>(*hooks_);
  (*next)[hook.target.get()].push_back(std::make_shared<const Hook>(std::move(hook)));
  int64_t id = nextId_ - 1;
  hooks_ = std::move(next);
  return id;
}

bool HookRegistry::Remove(int64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto next = std::make_shared<HookMap>(*hooks_);
  for (auto entry = next->begin(); entry != next->end(); ++entry) {
    auto& hooks = entry->second;
    for (auto hook = hooks.begin(); hook != hooks.end(); ++hook) {
      if ((*hook)->id != id) continue;
      hooks.erase(hook);
      if (hooks.empty()) next->erase(entry);
      hooks_ = std::move(next);
      return true;
    }
  }
  return false;
}

std::shared_ptr<const HookMap> HookRegistry::Snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return hooks_;
}

ForwardContext* CurrentForwardContext() { return currentContext; }

ForwardScope::ForwardScope(ForwardContext* context) : previous_(currentContext) { currentContext = context; }

ForwardScope::~ForwardScope() { currentContext = previous_; }

std::string HookedModuleName(const Hook& hook) { return hook.module.empty() ? "the root module" : "'" + hook.module + "'"; }

namespace {

std::string ShapeOf(const c10::IValue& value) {
  if (value.isTensor()) {
    const at::Tensor& tensor = value.toTensor();
    return tensor.defined() ? "[" + c10::Join(", ", tensor.sizes()) + "]" : "an undefined tensor";
  }
  return "a " + value.tagKind();
}

// Marks a hook as running on this call for its lifetime.
class Running {
 public:
  Running(ForwardContext& context, const Hook& hook) : context_(context) {
    for (const Hook* other : context.running) {
      if (other == &hook) {
        throw std::runtime_error("the branch hooked on " + HookedModuleName(hook) +
                                 " reached that module again: a branch must not contain the module it is attached to");
      }
    }
    context.running.push_back(&hook);
  }
  ~Running() { context_.running.pop_back(); }

 private:
  ForwardContext& context_;
};

c10::IValue RunBranch(ForwardContext& context, const Hook& hook, const c10::IValue& output) {
  Running running(context, hook);
  try {
    return hook.branch(output);
  } catch (const ForwardStopped&) {
    throw;
  } catch (const std::exception& error) {
    std::string message = error.what();
    // A branch that failed inside a nested branch already says where.
    if (message.rfind("the branch hooked on ", 0) == 0) throw;
    const auto* c10Error = dynamic_cast<const c10::Error*>(&error);
    throw std::runtime_error("the branch hooked on " + HookedModuleName(hook) + " failed on its input of shape " +
                             ShapeOf(output) + ": " + (c10Error ? c10Error->what_without_backtrace() : message));
  }
}

// With `ran`, the output of the point's one branch, computed in the compiled graph.
void RunHooksAt(const c10::ivalue::Object* module, const c10::IValue& inputs, const c10::IValue& output,
                const c10::IValue* ran = nullptr) {
  ForwardContext* context = currentContext;
  if (context == nullptr || context->hooks->empty()) return;
  auto found = context->hooks->find(module);
  if (found == context->hooks->end()) return;
  for (const auto& hook : found->second) {
    if (hook->branch) {
      c10::IValue result = ran != nullptr ? *ran : RunBranch(*context, *hook, output);
      context->outputs.push_back({hook->id, result});
      for (const StopRule& rule : context->stopRules) {
        if (rule.hookId != hook->id || !result.isTensor()) continue;
        StopDecision decision;
        try {
          decision = DecideStop(rule, result.toTensor(), context->patience);
        } catch (const std::invalid_argument& error) {
          throw std::runtime_error("the exit hooked on " + HookedModuleName(*hook) + " gives " + ShapeOf(result) + ": " +
                                   error.what());
        }
        if (decision.all) {
          context->stoppedBy = HookOutput{hook->id, result};
          throw ForwardStopped{};
        }
        if (rule.perSample && output.isTensor() && decision.any) LeaveEarly(*context, hook->id, decision.meeting, result, output);
      }
    } else if (hook->js) {
      if (context->js == nullptr) throw std::logic_error("a JS forward hook ran with no way to call JS");
      context->js->Call(*hook, inputs, output);
    }
  }
}

void Tap(torch::jit::Stack& stack) {
  c10::IValue output = torch::jit::pop(stack);
  c10::IValue inputs = torch::jit::pop(stack);
  c10::IValue module = torch::jit::pop(stack);
  RunHooks(module, inputs, output);
}

void ExitPointWith(torch::jit::Stack& stack, const c10::IValue* ran) {
  c10::IValue output = torch::jit::pop(stack);
  int64_t point = torch::jit::pop(stack).toInt();
  ForwardContext* context = currentContext;
  if (context != nullptr && context->exitPoints != nullptr) {
    // Restored however the hooks end (a stop throws).
    struct Running {
      ForwardContext* context;
      ~Running() { context->point = -1; }
    } running{context};
    context->point = point;
    RunHooksAt(context->exitPoints->at(point).get(), c10::IValue(), output, ran);
  }
  torch::jit::push(stack, std::move(output));
}

void ExitPoint(torch::jit::Stack& stack) { ExitPointWith(stack, nullptr); }

void ExitPointRan(torch::jit::Stack& stack) {
  c10::IValue branch = torch::jit::pop(stack);
  ExitPointWith(stack, &branch);
}

void Carry(torch::jit::Stack& stack) {
  c10::IValue value = torch::jit::pop(stack);
  int64_t point = torch::jit::pop(stack).toInt();
  ForwardContext* context = currentContext;
  const ForwardContext::Left* left = nullptr;
  for (size_t i = 0; context != nullptr && i < context->leftAt.size(); ++i) {
    if (context->leftAt[i].point == point) left = &context->leftAt[i];
  }
  if (left == nullptr) {
    torch::jit::push(stack, std::move(value));
    return;
  }
  c10::NoGradGuard noGrad;
  at::Tensor tensor = value.toTensor();
  if (!tensor.defined() || tensor.dim() == 0 || tensor.size(0) != left->before) {
    throw std::runtime_error("samples left the batch of " + std::to_string(left->before) + " at exit point " +
                             std::to_string(point) + ", but a value read after it, taken to hold the batch along dim 0, is " +
                             ShapeOf(value) + "; per-sample exits cannot apply there");
  }
  // oneDNN's opaque tensors cannot be indexed: through a plain tensor and back.
  at::Tensor rows = tensor.is_mkldnn() ? tensor.to_dense().index_select(0, left->staying).to_mkldnn()
                                       : tensor.index_select(0, left->staying.to(tensor.device()));
  torch::jit::push(stack, std::move(rows));
}

// CONSERVATIVE alias analysis makes the nodes side effects, so no pass removes them or
// moves work across them.
torch::jit::RegisterOperators registerTap({
    torch::jit::Operator("earlyexit::tap(Any module, Any inputs, Any output) -> ()", Tap,
                         c10::AliasAnalysisKind::CONSERVATIVE),
    torch::jit::Operator("earlyexit::exit_point(int point, Tensor output) -> Tensor", ExitPoint,
                         c10::AliasAnalysisKind::CONSERVATIVE),
    torch::jit::Operator("earlyexit::exit_point.ran(int point, Tensor output, Tensor branch) -> Tensor", ExitPointRan,
                         c10::AliasAnalysisKind::CONSERVATIVE),
    torch::jit::Operator("earlyexit::carry(int point, Tensor value) -> Tensor", Carry, c10::AliasAnalysisKind::CONSERVATIVE),
});

}  // namespace

void RunHooks(const c10::IValue& module, const c10::IValue& inputs, const c10::IValue& output) {
  if (module.isObject()) RunHooksAt(&module.toObjectRef(), inputs, output);
}

}  // namespace tee
