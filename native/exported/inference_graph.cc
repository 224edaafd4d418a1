#include "exported/inference_graph.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>

#include <algorithm>
#include <map>
#include <memory>
#include <stdexcept>

#include "hooks/forward_hooks.h"
#include "torchscript/batch_carry.h"

namespace tee {
namespace {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

// Python's integer operators on sizes, as TorchScript's int operators of the same meaning
// (aten::remainder.int is Python's %, aten::floordiv.int Python's //).
c10::Symbol SymbolicOperator(SymbolicOp op) {
  switch (op) {
    case SymbolicOp::kAdd: return c10::Symbol::aten("add");
    case SymbolicOp::kSub: return c10::Symbol::aten("sub");
    case SymbolicOp::kMul: return c10::Symbol::aten("mul");
    case SymbolicOp::kFloorDiv: return c10::Symbol::aten("floordiv");
    case SymbolicOp::kMod: return c10::Symbol::aten("remainder");
    case SymbolicOp::kNeg: return c10::Symbol::aten("neg");
    case SymbolicOp::kNone: break;
  }
  throw std::logic_error("not a symbolic node");
}

// Writes the program's nodes into `graph`, register by register. Sizes are the exception:
// the program computes the batch size once at the top (aten.sym_size.int of the input) and
// the interpreter shrinks that register when samples leave, but a TorchScript graph cannot
// shrink an int. So a size, and Python's arithmetic on sizes, is written where it is read,
// and the batch size is read off the latest tensor that carries the batch: after an exit
// point, that is the exit's (shrunk) output or something made from it.
class Writer {
 public:
  Writer(const ProgramGraph& program, Graph& graph)
      : program_(program), graph_(graph), values_(program.registerCount, nullptr), deferred_(program.registerCount, nullptr) {}

  Value* Read(int64_t index, const ProgramNode& node) {
    if (index >= 0 && static_cast<size_t>(index) < deferred_.size() && deferred_[index] != nullptr) return Size(*deferred_[index]);
    Value* value = index >= 0 && static_cast<size_t>(index) < values_.size() ? values_[index] : nullptr;
    if (value == nullptr) throw std::runtime_error(DescribeNode(node) + " reads a value that nothing before it made");
    return value;
  }

  Value* Argument(const ProgramArgument& argument, const ProgramNode& node) {
    switch (argument.kind) {
      case ProgramArgument::Kind::kConstant:
        return graph_.insertConstant(argument.constant);
      case ProgramArgument::Kind::kValue:
        return Read(argument.value, node);
      case ProgramArgument::Kind::kValues: {
        std::vector<Value*> items;
        for (int64_t value : argument.values) items.push_back(Read(value, node));
        return graph_.insertNode(graph_.createList(c10::TensorType::get(), items))->output();
      }
      case ProgramArgument::Kind::kOptionalValues: {
        std::vector<Value*> items;
        for (int64_t value : argument.values) items.push_back(value < 0 ? graph_.insertConstant(c10::IValue()) : Read(value, node));
        return graph_.insertNode(graph_.createList(c10::OptionalType::create(c10::TensorType::get()), items))->output();
      }
      case ProgramArgument::Kind::kInts: {
        std::vector<Value*> items;
        for (size_t i = 0; i < argument.values.size(); ++i) {
          items.push_back(argument.values[i] < 0 ? graph_.insertConstant(argument.literals[i]) : Read(argument.values[i], node));
        }
        return graph_.insertNode(graph_.createList(c10::IntType::get(), items))->output();
      }
    }
    throw std::logic_error("unknown argument kind");
  }

  // Writes one node, and notes the values it makes by register.
  void Write(const ProgramNode& node) {
    if (IsSize(node)) {
      Check(node.outputs.at(0), node);
      deferred_[node.outputs[0]] = &node;
      return;
    }
    const c10::FunctionSchema& schema = node.op->schema();
    std::vector<Value*> inputs;
    for (size_t a = 0; a < node.arguments.size(); ++a) {
      // Batch norm's `training` and dropout's `train` follow the mode: eval, when compiled.
      inputs.push_back(static_cast<int64_t>(a) == node.modeArgument ? graph_.insertConstant(false) : Argument(node.arguments[a], node));
    }
    Node* call = graph_.create(c10::Symbol::fromQualString(schema.name()), inputs, schema.returns().size());
    for (size_t r = 0; r < schema.returns().size(); ++r) call->output(r)->setType(schema.returns()[r].type());
    graph_.insertNode(call);
    if (call->maybeSchema() == nullptr || call->schema().overload_name() != schema.overload_name()) {
      throw std::runtime_error(DescribeNode(node) + ": TorchScript does not take it as " + c10::toString(schema) +
                               ", so the program cannot be compiled for inference");
    }
    if (node.returnsList) {
      for (size_t i = 0; i < node.listOutputs.size(); ++i) {
        if (node.listOutputs[i] < 0) continue;
        Set(node.listOutputs[i], graph_.insert(c10::Symbol::aten("__getitem__"), {call->output(0), static_cast<int64_t>(i)}), node);
      }
      return;
    }
    for (size_t i = 0; i < node.outputs.size() && i < call->outputs().size(); ++i) {
      if (node.outputs[i] >= 0) Set(node.outputs[i], call->output(i), node);
    }
  }

  // What register `index` holds now: null for a size (written where it is read) or nothing yet.
  Value* Held(int64_t index) const { return values_.at(index); }

  void Set(int64_t index, Value* value, const ProgramNode& node) {
    Check(index, node);
    values_[index] = value;
    if (program_.batched[index] && value->type()->kind() == c10::TypeKind::TensorType) latestBatched_ = value;
  }

 private:
  // aten.sym_size.int and Python's integer operators on sizes.
  static bool IsSize(const ProgramNode& node) {
    if (node.symbolic != SymbolicOp::kNone) return true;
    const c10::OperatorName& name = node.op->schema().operator_name();
    return name.name == "aten::sym_size" && name.overload_name == "int";
  }

  void Check(int64_t index, const ProgramNode& node) const {
    if (index < 0 || static_cast<size_t>(index) >= values_.size()) throw std::runtime_error(DescribeNode(node) + " writes past the registers");
  }

  // The size `node` computes, written here.
  Value* Size(const ProgramNode& node) {
    if (node.symbolic != SymbolicOp::kNone) {
      std::vector<torch::jit::NamedValue> operands;
      for (const ProgramArgument& argument : node.arguments) operands.emplace_back(Argument(argument, node));
      return graph_.insert(SymbolicOperator(node.symbolic), operands);
    }
    const ProgramArgument& self = node.arguments.at(0);
    const ProgramArgument& dim = node.arguments.at(1);
    bool batch = self.kind == ProgramArgument::Kind::kValue && program_.batched.at(self.value) &&
                 dim.kind == ProgramArgument::Kind::kConstant && dim.constant.isInt() && dim.constant.toInt() == 0;
    Value* tensor = batch && latestBatched_ != nullptr ? latestBatched_ : Argument(self, node);
    return graph_.insert(c10::aten::size, {tensor, Argument(dim, node)});
  }

  const ProgramGraph& program_;
  Graph& graph_;
  std::vector<Value*> values_;
  std::vector<const ProgramNode*> deferred_;
  Value* latestBatched_ = nullptr;
};

// Per register, one past the index of the last node that reads it (the program's outputs are
// read after the last node); 0 for a register nothing reads.
std::vector<size_t> LastReads(const ProgramGraph& program) {
  std::vector<size_t> last(program.registerCount, 0);
  auto read = [&last](int64_t index, size_t after) {
    if (index >= 0 && static_cast<size_t>(index) < last.size()) last[index] = std::max(last[index], after);
  };
  for (size_t k = 0; k < program.nodes.size(); ++k) {
    for (const ProgramArgument& argument : program.nodes[k].arguments) {
      if (argument.kind == ProgramArgument::Kind::kValue) read(argument.value, k + 1);
      for (int64_t value : argument.values) read(value, k + 1);
    }
  }
  for (int64_t output : program.outputs) read(output, program.nodes.size() + 1);
  return last;
}

// After the exit point `exit` (point `point`, at node `k`), every tensor the program says holds
// the batch and reads later goes through a carry; the reason when one cannot (it is no tensor).
std::string CarryPast(const ProgramGraph& program, Writer& writer, Graph& graph, Node* exit, int64_t point, size_t k,
                      const ProgramHook& hook, const std::vector<size_t>& lastReads) {
  std::vector<int64_t> carried;
  for (size_t r = 0; r < program.registerCount; ++r) {
    if (static_cast<int64_t>(r) == hook.output || !program.batched[r] || lastReads[r] <= k + 1) continue;
    Value* held = writer.Held(static_cast<int64_t>(r));
    if (held == nullptr) continue;
    if (held->type()->kind() != c10::TypeKind::TensorType) {
      return "a value holding the batch (" + held->type()->annotation_str() + ", made by " + program.nodes[k].name +
             " or before) is read after it, and only tensors can be carried past an exit";
    }
    carried.push_back(static_cast<int64_t>(r));
  }
  std::map<Value*, Value*> done;
  Node* after = exit;
  for (int64_t r : carried) {
    Value* held = writer.Held(r);
    auto found = done.find(held);
    if (found == done.end()) {
      found = done.emplace(held, InsertCarry(graph, after, point, held)).first;
      after = found->second->node();
    }
    writer.Set(r, found->second, program.nodes[k]);
  }
  return "";
}

}  // namespace

torch::jit::Module ProgramForInference(const ProgramGraph& program, const std::vector<std::string>& points,
                                       std::vector<std::string>& carryProblems) {
  carryProblems.assign(points.size(), "");
  std::vector<size_t> lastReads = LastReads(program);
  if (!program.mutations.empty()) {
    throw std::runtime_error("the program writes " + std::to_string(program.mutations.size()) +
                             " buffer(s) as it runs (BUFFER_MUTATION), which a compiled model, whose buffers are constants, cannot");
  }
  // Which point each module is, and that every point ends exactly once per forward.
  std::vector<int64_t> pointOf(program.modules.size(), -1);
  for (size_t p = 0; p < points.size(); ++p) {
    size_t module = 0;
    while (module < program.moduleNames.size() && program.moduleNames[module] != points[p]) ++module;
    int calls = 0;
    for (const ProgramHook& hook : program.hooks) calls += hook.module == static_cast<int64_t>(module) ? 1 : 0;
    if (module == program.moduleNames.size() || calls == 0) {
      throw std::runtime_error("exit point '" + points[p] + "' is never called by the model's forward, so it cannot be compiled with an exit");
    }
    if (calls != 1) {
      throw std::runtime_error("exit point '" + points[p] + "' is called " + std::to_string(calls) +
                               " times in one forward: the compiled model cannot tell which call is the exit");
    }
    pointOf[module] = static_cast<int64_t>(p);
  }

  auto unit = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module module(c10::QualifiedName("__torch__.tee.ExportedProgram"), unit, true);
  module.register_attribute("training", c10::BoolType::get(), false);
  auto graph = std::make_shared<Graph>();
  graph->addInput("self")->setType(module.type());
  Writer writer(program, *graph);
  int64_t users = 0;
  for (const ProgramInput& input : program.inputs) users = std::max(users, input.user + 1);
  std::vector<Value*> userInputs;
  for (int64_t u = 0; u < users; ++u) userInputs.push_back(graph->addInput("input" + std::to_string(u))->setType(c10::TensorType::get()));
  ProgramNode start;
  start.name = "(inputs)";
  for (size_t i = 0; i < program.inputs.size(); ++i) {
    const ProgramInput& input = program.inputs[i];
    // Weights enter as constants, as freezing would make them; the compiled model refuses
    // to run once they change in place (InferenceModel::StaleReason).
    Value* value = input.module < 0 ? userInputs.at(input.user)
                                    : graph->insertConstant(program.modules[input.module]->getSlot(input.slot).toTensor().detach());
    writer.Set(static_cast<int64_t>(i), value, start);
  }
  for (size_t k = 0; k < program.nodes.size(); ++k) {
    const ProgramNode& node = program.nodes[k];
    writer.Write(node);
    for (int64_t index : node.hooks) {
      const ProgramHook& hook = program.hooks[index];
      int64_t point = pointOf[hook.module];
      if (point < 0) continue;
      Value* output = writer.Read(hook.output, node);
      if (output->type()->kind() != c10::TypeKind::TensorType) {
        throw std::runtime_error("exit point '" + points[point] + "' returns " + output->type()->annotation_str() +
                                 ", not a Tensor: a compiled exit needs a Tensor to give its branch");
      }
      Node* exit = graph->create(c10::Symbol::fromQualString(kExitPointOperator), {graph->insertConstant(point), output}, 1);
      exit->output()->setType(output->type());
      graph->insertNode(exit);
      writer.Set(hook.output, exit->output(), node);
      carryProblems[point] = CarryPast(program, writer, *graph, exit, point, k, hook, lastReads);
    }
  }
  ProgramNode end;
  end.name = "(outputs)";
  if (program.outputs.size() == 1) {
    graph->registerOutput(writer.Read(program.outputs[0], end));
  } else {
    std::vector<Value*> results;
    for (int64_t output : program.outputs) results.push_back(writer.Read(output, end));
    graph->registerOutput(graph->insertNode(graph->createTuple(results))->output());
  }
  graph->lint();
  torch::jit::Function* forward = unit->create_function(c10::QualifiedName(*module.type()->name(), "forward"), graph);
  module.type()->addMethod(forward);
  return module;
}

}  // namespace tee
