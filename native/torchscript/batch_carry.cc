#include "torchscript/batch_carry.h"

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "hooks/forward_hooks.h"
#include "torchscript/batch_boundary.h"

namespace tee {
namespace {

using torch::jit::Block;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

// What a value of the forward is to a batch that loses samples.
struct Rows {
  enum Kind {
    kFree,  // the same whatever samples the batch holds (weights, settings, a sequence length)
    kRows,  // a tensor with one row per sample along dim 0
    kUnknown,
  } kind;
  // For kUnknown: the value, said for a message, and why it cannot be carried.
  std::string why;
  std::string because = "where it holds the batch cannot be told from the graph";
};

// Elementwise operations: each row of the output comes from the same row of every
// batch-sized input (the others being weights and settings), so the batch stays along dim 0.
// Broadcasting keeps it first when a batch-sized operand has the most dimensions; the carry
// checks the row count as it runs. Eval mode is implied (the compiled model is), where
// dropout changes nothing.
const std::unordered_set<std::string>& Elementwise() {
  static const std::unordered_set<std::string> names{
      "relu", "relu_", "relu6", "gelu", "silu", "silu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "hardswish", "hardswish_",
      "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_", "exp", "log",
      "sqrt", "rsqrt", "abs", "neg", "clamp", "clamp_", "clamp_min", "clamp_max", "dropout", "dropout_",
      "feature_dropout", "alpha_dropout", "contiguous", "clone", "detach", "to", "type_as", "float",
      "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "remainder", "pow", "eq", "ne", "lt", "le", "gt", "ge",
      "logical_and", "logical_or", "logical_not", "bitwise_not", "where", "masked_fill", "masked_fill_", "maximum",
      "minimum"};
  return names;
}

// Layers: each row of the output comes from the same row of the first argument, every other
// argument being a weight or a setting (batch norm mixes no rows in eval mode; x @ W
// contracts x's last dimension, where W @ x could contract the batch).
const std::unordered_set<std::string>& RowsOfFirst() {
  static const std::unordered_set<std::string> names{
      "conv1d", "conv2d", "conv3d", "_convolution", "convolution", "conv_transpose1d", "conv_transpose2d", "batch_norm",
      "layer_norm", "group_norm", "instance_norm", "linear", "matmul", "max_pool1d", "max_pool2d", "max_pool3d",
      "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"};
  return names;
}

// Operations that keep the batch along dim 0 when the dimension argument at this index is a
// constant of at least 1 (a negative one could count from a batch-only tensor's end).
const std::map<std::string, size_t>& AlongOtherDims() {
  static const std::map<std::string, size_t> names{{"softmax", 1}, {"log_softmax", 1}, {"select", 1},
                                                   {"unsqueeze", 1}, {"flatten", 1},     {"slice", 1}};
  return names;
}

std::optional<int64_t> ConstantInt(Value* value) {
  if (value->node()->kind() != c10::prim::Constant || value->type()->kind() != c10::TypeKind::IntType) return std::nullopt;
  auto constant = torch::jit::constant_as<int64_t>(value);  // c10::optional before LibTorch 2.4
  if (!constant) return std::nullopt;
  return *constant;
}

bool IsNone(Value* value) { return value->node()->kind() == c10::prim::Constant && value->type()->kind() == c10::TypeKind::NoneType; }

bool Within(Node* node, Node* ancestor) {
  for (Block* block = node->owningBlock(); block != nullptr && block->owningNode() != nullptr; block = block->owningNode()->owningBlock()) {
    if (block->owningNode() == ancestor) return true;
  }
  return false;
}

// Values read inside `node`'s blocks that were made outside it.
void ReadsFromOutside(Node* node, Block* block, std::vector<Value*>& found) {
  for (Node* inner : block->nodes()) {
    for (Value* input : inner->inputs()) {
      if (input->node() != node && !Within(input->node(), node)) found.push_back(input);
    }
    for (Block* nested : inner->blocks()) ReadsFromOutside(node, nested, found);
  }
  for (Value* output : block->outputs()) {
    if (output->node() != node && !Within(output->node(), node)) found.push_back(output);
  }
}

std::string Describe(Value* value) {
  Node* node = value->node();
  if (node->kind() == c10::prim::Param) return "the forward's argument '" + value->debugName() + "'";
  return "'" + value->debugName() + "' (made by " + std::string(node->kind().toQualString()) + ")";
}

class RowAnalysis {
 public:
  explicit RowAnalysis(Graph& graph) : graph_(graph) {}

  Rows Of(Value* value) {
    auto found = known_.find(value);
    if (found != known_.end()) return found->second;
    // A cycle (a loop's carried value) is not told apart: unknown until shown otherwise.
    known_[value] = {Rows::kUnknown, Describe(value)};
    Rows rows = Compute(value);
    known_[value] = rows;
    return rows;
  }

 private:
  Rows Unknown(Value* value) { return {Rows::kUnknown, Describe(value)}; }

  Rows Compute(Value* value) {
    Node* node = value->node();
    c10::Symbol kind = node->kind();
    bool tensor = value->type()->kind() == c10::TypeKind::TensorType;
    if (kind == c10::prim::Param) {
      if (node != graph_.block()->param_node()) return Unknown(value);
      if (value->offset() == 0) return {Rows::kFree, ""};  // self
      return tensor ? Rows{Rows::kRows, ""} : Unknown(value);
    }
    if (kind == c10::prim::Constant || kind == c10::prim::GetAttr) return {Rows::kFree, ""};
    if (kind == c10::Symbol::fromQualString(kExitPointOperator) || kind == c10::Symbol::fromQualString(kCarryOperator)) {
      return {Rows::kRows, ""};
    }
    std::vector<Value*> reads(node->inputs().begin(), node->inputs().end());
    for (Block* block : node->blocks()) ReadsFromOutside(node, block, reads);
    bool free = true;
    for (Value* input : reads) {
      Rows rows = Of(input);
      if (rows.kind == Rows::kUnknown) return rows;
      free = free && rows.kind == Rows::kFree;
    }
    if (free) return {Rows::kFree, ""};
    if (kind == c10::prim::If) return OfIf(node, value);
    // Reads a batch-sized tensor: only what is known to keep rows apart.
    if (kind == c10::aten::size && node->inputs().size() == 2) {
      std::optional<int64_t> dim = ConstantInt(node->input(1));
      if (dim && *dim >= 1) return {Rows::kFree, ""};
      if (dim && *dim == 0) return {Rows::kUnknown, Describe(value), "it is the batch size, a number that cannot lose samples"};
      return Unknown(value);
    }
    if (kind == c10::aten::dim) return {Rows::kFree, ""};
    if (!tensor || node->outputs().size() != 1 || !kind.is_aten()) return Unknown(value);
    std::string name = kind.toUnqualString();
    if (Elementwise().count(name) > 0) return {Rows::kRows, ""};
    // Past here the batch comes in through one argument: the first (the indices, for an
    // embedding), every other one free of it.
    size_t batchArgument = name == "embedding" ? 1 : 0;
    for (size_t i = 0; i < node->inputs().size(); ++i) {
      if ((i == batchArgument) != (Of(node->input(i)).kind == Rows::kRows)) return Unknown(value);
    }
    if (RowsOfFirst().count(name) > 0 || name == "embedding") return {Rows::kRows, ""};
    auto along = AlongOtherDims().find(name);
    if (along != AlongOtherDims().end() && node->inputs().size() > along->second) {
      std::optional<int64_t> dim = ConstantInt(node->input(along->second));
      if (dim && *dim >= 1) return {Rows::kRows, ""};
      // x[:, ...]: all of dim 0.
      if (name == "slice" && dim && *dim == 0 && node->inputs().size() == 5) {
        std::optional<int64_t> start = ConstantInt(node->input(2));
        std::optional<int64_t> end = ConstantInt(node->input(3));
        std::optional<int64_t> step = ConstantInt(node->input(4));
        bool whole = (IsNone(node->input(2)) || (start && *start == 0)) &&
                     (IsNone(node->input(3)) || (end && *end == std::numeric_limits<int64_t>::max())) && step && *step == 1;
        if (whole) return {Rows::kRows, ""};
      }
    }
    if (name == "transpose" && node->inputs().size() == 3) {
      std::optional<int64_t> a = ConstantInt(node->input(1));
      std::optional<int64_t> b = ConstantInt(node->input(2));
      if (a && b && *a >= 1 && *b >= 1) return {Rows::kRows, ""};
    }
    return Unknown(value);
  }

  // An if/else whose condition does not depend on the batch: rows when every branch gives rows.
  Rows OfIf(Node* node, Value* value) {
    Rows condition = Of(node->input(0));
    if (condition.kind != Rows::kFree) {
      return {Rows::kUnknown, Describe(value), "it comes out of an if/else whose condition reads the batch"};
    }
    size_t index = value->offset();
    bool rows = value->type()->kind() == c10::TypeKind::TensorType;
    for (Block* block : node->blocks()) {
      Rows branch = Of(block->outputs()[index]);
      if (branch.kind == Rows::kUnknown) return branch;
      rows = rows && branch.kind == Rows::kRows;
    }
    return rows ? Rows{Rows::kRows, ""} : Unknown(value);
  }

  Graph& graph_;
  std::unordered_map<Value*, Rows> known_;
};

// The values to carry past `point`, or why there is one that cannot be.
std::string ToCarry(RowAnalysis& analysis, Graph& graph, Node* point, Value* flowing, std::vector<Value*>& carried) {
  if (point->owningBlock() != graph.block()) return "it sits inside an if/else or a loop of the forward";
  for (Value* value : LiveAcross(graph, point, flowing)) {
    Rows rows = analysis.Of(value);
    if (rows.kind == Rows::kRows) {
      carried.push_back(value);
    } else if (rows.kind == Rows::kUnknown) {
      // The value itself, or what it was made from.
      std::string subject = Describe(value);
      return subject + " is made before it and read after it, and " +
             (rows.why == subject ? rows.because : "it comes from " + rows.why + ": " + rows.because);
    }
  }
  return "";
}

}  // namespace

std::string CarryProblem(Graph& graph, Node* point, Value* flowing) {
  RowAnalysis analysis(graph);
  std::vector<Value*> carried;
  return ToCarry(analysis, graph, point, flowing, carried);
}

std::string CarryProblemAt(const torch::jit::Module& root, const std::string& qualifiedName) {
  std::vector<Node*> calls;
  std::shared_ptr<Graph> graph = InlinedCallsOf(root, qualifiedName, calls);
  if (graph == nullptr) return "the model's forward is not a TorchScript graph";
  if (calls.size() != 1) return "it is not called exactly once by the forward";
  return CarryProblem(*graph, calls[0], calls[0]->input(2));
}

Value* InsertCarry(Graph& graph, Node* after, int64_t point, Value* value) {
  torch::jit::WithInsertPoint insert(after->next());
  Node* carry = graph.create(c10::Symbol::fromQualString(kCarryOperator), {graph.insertConstant(point), value}, 1);
  carry->output()->setType(value->type());
  graph.insertNode(carry);
  value->replaceAllUsesAfterNodeWith(carry, carry->output());
  return carry->output();
}

void CarryPastExitPoints(Graph& graph, std::vector<std::string>& problems) {
  std::vector<Node*> exits;
  CollectExitPoints(graph.block(), exits);
  RowAnalysis analysis(graph);
  for (Node* exit : exits) {
    int64_t index = torch::jit::constant_as<int64_t>(exit->input(0)).value();
    if (!problems.at(index).empty()) continue;
    std::vector<Value*> carried;
    std::string problem = ToCarry(analysis, graph, exit, exit->input(1), carried);
    if (!problem.empty()) {
      problems.at(index) = problem;
      continue;
    }
    Node* after = exit;
    for (Value* value : carried) after = InsertCarry(graph, after, index, value)->node();
  }
}

}  // namespace tee
