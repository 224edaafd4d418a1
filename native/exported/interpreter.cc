#include "exported/interpreter.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <stdexcept>

#include "hooks/forward_hooks.h"

namespace tee {
namespace {

int64_t FloorDiv(int64_t a, int64_t b) {
  if (b == 0) throw std::runtime_error("division by zero in a symbolic size");
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

int64_t Symbolic(const ProgramNode& node, const std::vector<c10::IValue>& registers) {
  auto operand = [&](size_t i) -> int64_t {
    const ProgramArgument& argument = node.arguments.at(i);
    const c10::IValue& value = argument.kind == ProgramArgument::Kind::kValue ? registers.at(argument.value) : argument.constant;
    if (!value.isInt()) throw std::runtime_error(DescribeNode(node) + ": a symbolic size operand is not an integer but a " + value.tagKind());
    return value.toInt();
  };
  switch (node.symbolic) {
    case SymbolicOp::kAdd: return operand(0) + operand(1);
    case SymbolicOp::kSub: return operand(0) - operand(1);
    case SymbolicOp::kMul: return operand(0) * operand(1);
    case SymbolicOp::kFloorDiv: return FloorDiv(operand(0), operand(1));
    case SymbolicOp::kMod: {
      int64_t b = operand(1);
      return operand(0) - FloorDiv(operand(0), b) * b;
    }
    case SymbolicOp::kNeg: return -operand(0);
    case SymbolicOp::kNone: break;
  }
  throw std::logic_error("not a symbolic node");
}

void Push(const ProgramArgument& argument, const std::vector<c10::IValue>& registers, torch::jit::Stack& stack) {
  switch (argument.kind) {
    case ProgramArgument::Kind::kConstant:
      stack.push_back(argument.constant);
      return;
    case ProgramArgument::Kind::kValue:
      stack.push_back(registers[argument.value]);
      return;
    case ProgramArgument::Kind::kValues: {
      c10::List<at::Tensor> list;
      list.reserve(argument.values.size());
      for (int64_t value : argument.values) list.push_back(registers[value].toTensor());
      stack.emplace_back(std::move(list));
      return;
    }
    case ProgramArgument::Kind::kOptionalValues: {
      c10::List<c10::optional<at::Tensor>> list;
      list.reserve(argument.values.size());
      for (int64_t value : argument.values) {
        list.push_back(value < 0 ? c10::optional<at::Tensor>() : c10::optional<at::Tensor>(registers[value].toTensor()));
      }
      stack.emplace_back(std::move(list));
      return;
    }
    case ProgramArgument::Kind::kInts: {
      std::vector<int64_t> ints(argument.values.size());
      for (size_t i = 0; i < ints.size(); ++i) {
        ints[i] = argument.values[i] < 0 ? argument.literals[i] : registers[argument.values[i]].toInt();
      }
      stack.emplace_back(std::move(ints));
      return;
    }
  }
}

// "aten::conv2d.default" -> {"aten::conv2d", ""}; "aten::add.Tensor" -> {"aten::add", "Tensor"}.
c10::OperatorName SplitTarget(const std::string& target) {
  size_t dot = target.find('.', target.find("::") == std::string::npos ? 0 : target.find("::") + 2);
  if (dot == std::string::npos) return {target, ""};
  std::string overload = target.substr(dot + 1);
  return {target.substr(0, dot), overload == "default" ? "" : overload};
}

// Python passes a number where an operator takes a Tensor (x / 8.0 is aten.div.Tensor with
// other=8.0) as a 0-dim tensor marked a wrapped number, which type promotion treats as a
// scalar: float32 / 8.0 stays float32. The interpreter does the same, once, at load.
void WrapNumber(const c10::Argument& formal, ProgramArgument& argument) {
  if (formal.type()->kind() != c10::TypeKind::TensorType || argument.kind != ProgramArgument::Kind::kConstant) return;
  const c10::IValue& value = argument.constant;
  if (!value.isDouble() && !value.isInt() && !value.isBool()) return;
  at::Tensor wrapped = value.isDouble() ? at::scalar_tensor(value.toDouble(), at::kDouble)
                       : value.isInt()  ? at::scalar_tensor(value.toInt(), at::kLong)
                                        : at::scalar_tensor(value.toBool(), at::kBool);
  wrapped.unsafeGetTensorImpl()->set_wrapped_number(true);
  argument.constant = wrapped;
}

}  // namespace

std::string DescribeNode(const ProgramNode& node) {
  return "node '" + node.name + "' (" + node.target + (node.module.empty() ? "" : ", in module '" + node.module + "'") + ")";
}

c10::IValue ProgramGraph::Run(std::vector<c10::IValue> userInputs) const {
  std::vector<c10::IValue> registers(registerCount);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const ProgramInput& input = inputs[i];
    registers[i] = input.module < 0 ? std::move(userInputs.at(input.user)) : modules[input.module]->getSlot(input.slot);
  }
  // When samples leave the batch at a hook, every live value that carries the batch
  // shrinks with them: skip connections, masks and sizes alike. Only a call with a
  // per-sample stop rule can see samples leave.
  ForwardContext* context = CurrentForwardContext();
  bool perSample = context != nullptr && std::any_of(context->stopRules.begin(), context->stopRules.end(),
                                                      [](const StopRule& rule) { return rule.perSample; });
  std::function<void(const at::Tensor&, int64_t)> previousShrink;
  if (perSample) {
    previousShrink = context->shrink;
    context->shrink = [&](const at::Tensor& staying, int64_t before) {
      int64_t after = staying.size(0);
      for (size_t r = 0; r < registers.size(); ++r) {
        if (!batched[r]) continue;
        c10::IValue& value = registers[r];
        if (value.isInt() && value.toInt() == before) {
          value = after;
        } else if (value.isTensor() && value.toTensor().defined() && value.toTensor().dim() > 0 &&
                   value.toTensor().size(0) == before) {
          value = value.toTensor().index_select(0, staying);
        }
      }
    };
  }
  // Puts the context's shrink back, and counts the nodes run, when the run ends or stops.
  int64_t run = 0;
  struct Finish {
    ForwardContext* context;
    std::function<void(const at::Tensor&, int64_t)>* previous;
    const std::shared_ptr<std::atomic<int64_t>>& counter;
    int64_t* run;
    ~Finish() {
      if (context != nullptr) context->shrink = std::move(*previous);
      counter->fetch_add(*run, std::memory_order_relaxed);
    }
  } finish{perSample ? context : nullptr, &previousShrink, nodesRun, &run};

  torch::jit::Stack stack;
  for (const ProgramNode& node : nodes) {
    ++run;
    if (node.symbolic != SymbolicOp::kNone) {
      registers[node.outputs.at(0)] = Symbolic(node, registers);
    } else {
      stack.clear();
      for (size_t a = 0; a < node.arguments.size(); ++a) {
        if (static_cast<int64_t>(a) == node.modeArgument) {
          stack.emplace_back(modules[node.modeModule]->getSlot(node.modeSlot).toBool());
        } else {
          Push(node.arguments[a], registers, stack);
        }
      }
      try {
        node.op->callBoxed(&stack);
      } catch (const c10::Error& error) {
        throw std::runtime_error(DescribeNode(node) + " failed: " + error.what_without_backtrace());
      } catch (const ForwardStopped&) {
        throw;
      } catch (const std::exception& error) {
        throw std::runtime_error(DescribeNode(node) + " failed: " + error.what());
      }
      if (node.returnsList) {
        c10::List<at::Tensor> list = stack.at(0).toTensorList();
        if (list.size() < node.listOutputs.size()) {
          throw std::runtime_error(DescribeNode(node) + " returned " + std::to_string(list.size()) + " tensors where the program uses " +
                                   std::to_string(node.listOutputs.size()));
        }
        for (size_t i = 0; i < node.listOutputs.size(); ++i) {
          if (node.listOutputs[i] >= 0) registers[node.listOutputs[i]] = list.get(i);
        }
      } else {
        for (size_t i = 0; i < node.outputs.size() && i < stack.size(); ++i) {
          if (node.outputs[i] >= 0) registers[node.outputs[i]] = std::move(stack[i]);
        }
      }
      if (node.batchCounter >= 0 && modules[node.modeModule]->getSlot(node.modeSlot).toBool()) {
        c10::NoGradGuard noGrad;
        const ProgramInput& counter = inputs[node.batchCounter];
        modules[counter.module]->getSlot(counter.slot).toTensor().add_(1);
      }
    }
    for (int64_t index : node.hooks) {
      const ProgramHook& hook = hooks[index];
      std::vector<c10::IValue> hookInputs;
      hookInputs.reserve(hook.inputs.size());
      for (int64_t input : hook.inputs) hookInputs.push_back(registers[input]);
      RunHooks(c10::IValue(modules[hook.module]), c10::ivalue::Tuple::create(std::move(hookInputs)), registers[hook.output]);
    }
    for (int64_t freed : node.frees) registers[freed] = c10::IValue();
  }
  for (const auto& [value, input] : mutations) {
    c10::NoGradGuard noGrad;
    const ProgramInput& buffer = inputs[input];
    modules[buffer.module]->getSlot(buffer.slot).toTensor().copy_(registers[value].toTensor());
  }
  if (outputs.size() == 1) return registers[outputs[0]];
  std::vector<c10::IValue> results;
  for (int64_t output : outputs) results.push_back(registers[output]);
  return c10::ivalue::Tuple::create(std::move(results));
}

void ResolveOperators(ProgramGraph& graph) {
  for (ProgramNode& node : graph.nodes) {
    if (node.symbolic != SymbolicOp::kNone) {
      for (auto& [name, argument] : node.given) node.arguments.push_back(std::move(argument));
      node.given.clear();
      continue;
    }
    c10::OperatorName name = SplitTarget(node.target);
    auto handle = c10::Dispatcher::singleton().findSchema(name);
    if (!handle) {
      throw std::runtime_error(DescribeNode(node) + ": this LibTorch has no operator " + name.name +
                               (name.overload_name.empty() ? "" : "." + name.overload_name) +
                               " (the program was exported by a newer PyTorch, or uses a custom operator)");
    }
    node.op = *handle;
    const c10::FunctionSchema& schema = handle->schema();
    std::vector<bool> used(node.given.size(), false);
    for (size_t a = 0; a < schema.arguments().size(); ++a) {
      const c10::Argument& formal = schema.arguments()[a];
      size_t found = node.given.size();
      for (size_t g = 0; g < node.given.size(); ++g) {
        if (!used[g] && node.given[g].first == formal.name()) found = g;
      }
      if (found < node.given.size()) {
        used[found] = true;
        node.arguments.push_back(std::move(node.given[found].second));
        WrapNumber(formal, node.arguments.back());
      } else if (formal.default_value()) {
        ProgramArgument argument;
        argument.constant = *formal.default_value();
        node.arguments.push_back(std::move(argument));
      } else {
        throw std::runtime_error(DescribeNode(node) + ": the program gives no argument '" + formal.name() + "' that " +
                                 c10::toString(schema) + " needs");
      }
    }
    for (size_t g = 0; g < node.given.size(); ++g) {
      if (!used[g]) {
        throw std::runtime_error(DescribeNode(node) + ": the program gives an argument '" + node.given[g].first + "' that " +
                                 c10::toString(schema) + " does not have");
      }
    }
    node.given.clear();
    if (!node.modeArgumentName.empty()) {
      for (size_t a = 0; a < schema.arguments().size(); ++a) {
        if (schema.arguments()[a].name() == node.modeArgumentName) node.modeArgument = static_cast<int64_t>(a);
      }
      if (node.modeArgument < 0) throw std::runtime_error(DescribeNode(node) + ": no argument '" + node.modeArgumentName + "' to follow train/eval");
    }
    node.returnsList = schema.returns().size() == 1 && schema.returns()[0].type()->kind() == c10::TypeKind::ListType;
  }
}

}  // namespace tee
