// The interpreter of an exported program (torch.export): its graph as a flat list of ATen
// calls, each resolved once to a dispatcher handle and run in a loop this library owns, so
// that every module's end is a place in that loop where hooks run and exits stop.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace tee {

// One argument of a node, in the order of the operator's schema.
struct ProgramArgument {
  enum class Kind { kConstant, kValue, kValues, kOptionalValues, kInts };
  Kind kind = Kind::kConstant;
  c10::IValue constant;
  int64_t value = -1;
  // kValues, kOptionalValues (-1: None) and kInts (-1: the literal in `literals`).
  std::vector<int64_t> values;
  std::vector<int64_t> literals;
};

// Python's integer arithmetic on symbolic sizes (operator.mul and the like).
enum class SymbolicOp { kNone, kAdd, kSub, kMul, kFloorDiv, kMod, kNeg };

struct ProgramNode {
  std::string name;    // the node's name in the exported graph, for messages
  std::string target;  // aten::conv2d.default
  std::string module;  // the innermost module it came from, for messages
  std::optional<c10::OperatorHandle> op;
  SymbolicOp symbolic = SymbolicOp::kNone;
  std::vector<ProgramArgument> arguments;
  // The arguments as the file names them (positional ones by the schema's names), until
  // ResolveOperators puts them in schema order.
  std::vector<std::pair<std::string, ProgramArgument>> given;
  // The register of each return (-1: unused); a list return unpacks into `listOutputs`.
  std::vector<int64_t> outputs;
  std::vector<int64_t> listOutputs;
  bool returnsList = false;
  // A bool argument that follows the mode of a module (batch norm's `training`, dropout's
  // `train`), and the buffer that batch norm counts batches in while training.
  std::string modeArgumentName;
  int64_t modeArgument = -1;  // its index in the schema, set by ResolveOperators
  int64_t modeModule = -1;
  int64_t batchCounter = -1;  // an index into ProgramGraph::inputs
  size_t modeSlot = 0;         // the slot of `training` in the mode module's object
  // Registers read for the last time by this node: freed after it.
  std::vector<int64_t> frees;
  // Indices into ProgramGraph::hooks of the modules that end at this node.
  std::vector<int64_t> hooks;
};

// A module's end: its output, and the values it read from outside (its inputs for JS hooks).
struct ProgramHook {
  int64_t module = -1;
  int64_t output = -1;
  std::vector<int64_t> inputs;
};

// Where a graph input comes from: a module's parameter, buffer or constant, or a user input.
struct ProgramInput {
  int64_t module = -1;  // -1: the user input `user`
  int64_t user = -1;
  size_t slot = 0;  // the attribute's slot in its module object, resolved at load
};

struct ProgramGraph {
  // The module objects, by the indices the nodes use ('' first), held for the run.
  std::vector<c10::intrusive_ptr<c10::ivalue::Object>> modules;
  std::vector<std::string> moduleNames;
  std::vector<ProgramInput> inputs;  // register i is filled from inputs[i]
  std::vector<ProgramNode> nodes;
  std::vector<ProgramHook> hooks;
  std::vector<int64_t> outputs;
  // Buffers the program writes (BUFFER_MUTATION): [register, input index of the buffer].
  std::vector<std::pair<int64_t, int64_t>> mutations;
  // Registers that hold the batch: tensors whose first dimension is the batch, and sizes
  // equal to it. When samples leave early, these shrink with them.
  std::vector<bool> batched;
  size_t registerCount = 0;
  // Nodes run since load (for tests that count what a stop skipped), shared with ModelState.
  std::shared_ptr<std::atomic<int64_t>> nodesRun = std::make_shared<std::atomic<int64_t>>(0);

  // Runs the program on the user inputs; hooks run through the current ForwardContext.
  c10::IValue Run(std::vector<c10::IValue> userInputs) const;
};

// "node 'relu_3' (aten::relu.default, in module 'layer1.0')", for messages.
std::string DescribeNode(const ProgramNode& node);

// Resolves every node's operator and checks its arguments against the schema; throws a
// message naming the node when one cannot run in this LibTorch.
void ResolveOperators(ProgramGraph& graph);

}  // namespace tee
