#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include <optional>
#include <set>
#include <unordered_map>

#include "onednn/chain.h"
#include "onednn/chains.h"

namespace tee::onednn {
namespace {

using torch::jit::Node;
using torch::jit::Value;

std::optional<std::vector<int64_t>> Ints(Value* value, size_t length) {
  std::optional<c10::IValue> constant = torch::jit::toIValue(value);
  if (!constant || !constant->isIntList()) return std::nullopt;
  std::vector<int64_t> ints = constant->toIntVector();
  if (ints.size() == 1) ints.assign(length, ints[0]);
  if (ints.size() != length) return std::nullopt;
  return ints;
}

std::optional<int64_t> Int(Value* value) {
  std::optional<c10::IValue> constant = torch::jit::toIValue(value);
  if (!constant || !constant->isInt()) return std::nullopt;
  return constant->toInt();
}

std::optional<double> Number(Value* value) {
  std::optional<c10::IValue> constant = torch::jit::toIValue(value);
  if (!constant || !(constant->isInt() || constant->isDouble())) return std::nullopt;
  return constant->isInt() ? static_cast<double>(constant->toInt()) : constant->toDouble();
}

std::optional<bool> Bool(Value* value) {
  std::optional<c10::IValue> constant = torch::jit::toIValue(value);
  if (!constant || !constant->isBool()) return std::nullopt;
  return constant->toBool();
}

// A frozen weight: a float32 CPU constant of `dims` dimensions.
std::optional<at::Tensor> Weight(Value* value, int64_t dims) {
  std::optional<c10::IValue> constant = torch::jit::toIValue(value);
  if (!constant || !constant->isTensor()) return std::nullopt;
  at::Tensor tensor = constant->toTensor();
  if (tensor.dim() != dims || tensor.scalar_type() != at::kFloat || !tensor.device().is_cpu() || tensor.is_mkldnn()) {
    return std::nullopt;
  }
  return tensor.contiguous();
}

// None, or a weight.
bool OptionalWeight(Value* value, at::Tensor& tensor) {
  if (value->type()->kind() == c10::TypeKind::NoneType) return true;
  std::optional<at::Tensor> weight = Weight(value, 1);
  if (!weight) return false;
  tensor = *weight;
  return true;
}

std::string Where(Node* node, const NodeOrigins& origins) {
  std::string where = node->kind().toQualString();
  if (node->outputs().size() == 1) where += " (%" + node->output()->debugName() + ")";
  auto origin = origins.find(node);
  if (origin != origins.end()) where += " in " + origin->second;
  return where;
}

bool IsTensor(Value* value) { return value->type()->isSubtypeOf(*c10::TensorType::get()); }

// One run of nodes being gathered into a chain.
class Builder {
 public:
  explicit Builder(const NodeOrigins& origins) : origins_(&origins) {}

  bool Empty() const { return nodes_.empty(); }

  // Adds `node` when it is supported and reads only the run's values and tensors made before it.
  bool TryAdd(Node* node) {
    if (taken_.count(node)) return true;
    const std::string kind = node->kind().toQualString();
    if (kind == "aten::conv2d" || kind == "aten::_convolution") return AddConvolution(node, kind == "aten::_convolution");
    if (kind == "aten::linear") return AddLinear(node);
    if (kind == "aten::relu" || kind == "aten::relu_") return AddActivation(node, Activation::kRelu, 0, 0);
    if (kind == "aten::hardtanh" || kind == "aten::hardtanh_") {
      std::optional<double> low = Number(node->input(1)), high = Number(node->input(2));
      return low && high && AddActivation(node, Activation::kClip, static_cast<float>(*low), static_cast<float>(*high));
    }
    if (kind == "aten::hardswish" || kind == "aten::hardswish_") return AddActivation(node, Activation::kHardswish, 0, 0);
    if (kind == "aten::gelu") {
      std::string approximate = "none";
      if (node->inputs().size() > 1) {
        std::optional<c10::IValue> constant = torch::jit::toIValue(node->input(1));
        if (!constant || !constant->isString()) return false;
        approximate = constant->toStringRef();
      }
      if (approximate != "none" && approximate != "tanh") return false;
      return AddActivation(node, approximate == "none" ? Activation::kGeluErf : Activation::kGeluTanh, 0, 0);
    }
    if (kind == "aten::add" || kind == "aten::add_") return AddSum(node);
    if (kind == "aten::max_pool2d" || kind == "aten::avg_pool2d" || kind == "aten::adaptive_avg_pool2d") return AddPooling(node, kind);
    if (kind == "aten::flatten") return AddFlatten(node);
    if (kind == "aten::size") return node->inputs().size() == 1 ? AddRankCheck(node) : AddRowsView(node);
    return false;
  }

  // Replaces the run by a chain call when it has a convolution or linear layer to build around.
  bool Flush(torch::jit::Graph& graph) {
    bool made = heavy_ && Lower(graph);
    *this = Builder(*origins_);
    return made;
  }

 private:
  // The run's id for `value`: its own value, or a tensor from before the run (a new input).
  int Id(Value* value) {
    auto found = ids_.find(value);
    if (found != ids_.end()) return found->second;
    int id = static_cast<int>(producer_.size());
    ids_[value] = id;
    producer_.push_back(-1);
    rank_.push_back(-1);
    externals_.push_back(value);
    return id;
  }
  bool Produced(Value* value) const {
    auto found = ids_.find(value);
    return found != ids_.end() && producer_[found->second] >= 0;
  }
  int Rank(Value* value) const {
    auto found = ids_.find(value);
    return found == ids_.end() ? -1 : rank_[found->second];
  }
  int NewValue(Value* value, int producer, int rank) {
    int id = static_cast<int>(producer_.size());
    ids_[value] = id;
    producer_.push_back(producer);
    rank_.push_back(rank);
    return id;
  }

  void Push(Node* node, ChainOp op, int rank) {
    op.where = Where(node, *origins_);
    int index = static_cast<int>(spec_.ops.size());
    op.output = NewValue(node->output(), index, rank);
    spec_.ops.push_back(std::move(op));
    nodes_.push_back(node);
  }

  // An in-place op on `value` may run out of place only when nothing after it reads `value`.
  static bool OnlyEarlierUses(Value* value, Node* node) {
    for (const torch::jit::Use& use : value->uses()) {
      if (use.user != node && !use.user->isBefore(node)) return false;
    }
    return true;
  }

  // The convolution or linear layer whose output `value` is, when nothing else reads it, so
  // that what follows can be its post-op; -1 otherwise.
  int FusibleProducer(Value* value) const {
    auto found = ids_.find(value);
    if (found == ids_.end() || value->uses().size() != 1) return -1;
    int op = producer_[found->second];
    if (op < 0) return -1;
    const ChainOp& producer = spec_.ops[op];
    if (producer.output != found->second) return -1;
    return producer.kind == OpKind::kConvolution || producer.kind == OpKind::kLinear ? op : -1;
  }

  // `node` as a post-op of op `producer`, whose output `input` was: its output is that op's from now on.
  bool Fuse(Node* node, int producer, const PostOp& post, Value* input) {
    spec_.ops[producer].postOps.push_back(post);
    ids_[node->output()] = ids_.at(input);
    nodes_.push_back(node);
    return true;
  }

  bool InPlaceAllowed(Node* node, Value* mutated) const {
    const std::string kind = node->kind().toQualString();
    if (kind.back() != '_') return true;
    return Produced(mutated) && OnlyEarlierUses(mutated, node);
  }

  bool AddConvolution(Node* node, bool general) {
    Value* input = node->input(0);
    if (!IsTensor(input) || (Rank(input) != -1 && Rank(input) != 4)) return false;
    std::optional<at::Tensor> weight = Weight(node->input(1), 4);
    ChainOp op;
    op.kind = OpKind::kConvolution;
    if (!weight || !OptionalWeight(node->input(2), op.bias)) return false;
    auto stride = Ints(node->input(3), 2), padding = Ints(node->input(4), 2), dilation = Ints(node->input(5), 2);
    std::optional<int64_t> groups;
    if (general) {
      std::optional<bool> transposed = Bool(node->input(6));
      if (!transposed || *transposed) return false;
      groups = Int(node->input(8));
    } else {
      if (node->inputs().size() != 7 || !node->input(4)->type()->isSubtypeOf(*c10::ListType::ofInts())) return false;
      groups = Int(node->input(6));
    }
    if (!stride || !padding || !dilation || !groups || *groups < 1) return false;
    op.weight = *weight;
    op.stride = *stride, op.padding = *padding, op.dilation = *dilation, op.groups = *groups;
    op.inputs = {Id(input)};
    heavy_ = true;
    Push(node, std::move(op), 4);
    return true;
  }

  bool AddLinear(Node* node) {
    Value* input = node->input(0);
    // oneDNN's inner product is a linear layer on (batch, features) only.
    if (!Produced(input) || Rank(input) != 2) return false;
    std::optional<at::Tensor> weight = Weight(node->input(1), 2);
    ChainOp op;
    op.kind = OpKind::kLinear;
    if (!weight || !OptionalWeight(node->input(2), op.bias)) return false;
    op.weight = *weight;
    op.inputs = {Id(input)};
    heavy_ = true;
    Push(node, std::move(op), 2);
    return true;
  }

  bool AddActivation(Node* node, Activation activation, float alpha, float beta) {
    Value* input = node->input(0);
    if (!IsTensor(input) || !InPlaceAllowed(node, input)) return false;
    int producer = FusibleProducer(input);
    if (producer >= 0) {
      PostOp post;
      post.activation = activation, post.alpha = alpha, post.beta = beta;
      return Fuse(node, producer, post, input);
    }
    ChainOp op;
    op.kind = OpKind::kEltwise;
    op.activation = activation, op.alpha = alpha, op.beta = beta;
    int rank = Rank(input);
    op.inputs = {Id(input)};
    Push(node, std::move(op), rank);
    return true;
  }

  bool AddSum(Node* node) {
    if (node->inputs().size() != 3) return false;
    Value* a = node->input(0);
    Value* b = node->input(1);
    std::optional<double> alpha = Number(node->input(2));
    if (!IsTensor(a) || !IsTensor(b) || !alpha || *alpha != 1.0 || a == b) return false;
    // A residual add: at least one side made in the run (an add of two outside tensors may broadcast).
    if (!Produced(a) && !Produced(b)) return false;
    if (!InPlaceAllowed(node, a)) return false;
    int rank = Rank(a) != -1 ? Rank(a) : Rank(b);
    for (auto [into, other] : {std::pair<Value*, Value*>{a, b}, std::pair<Value*, Value*>{b, a}}) {
      int producer = FusibleProducer(into);
      if (producer < 0) continue;
      auto known = ids_.find(other);
      // The other side must exist when the producer runs.
      if (known != ids_.end() && producer_[known->second] >= producer) continue;
      PostOp post;
      post.add = true;
      post.operand = Id(other);
      return Fuse(node, producer, post, into);
    }
    ChainOp op;
    op.kind = OpKind::kAdd;
    op.inputs = {Id(a), Id(b)};
    Push(node, std::move(op), rank);
    return true;
  }

  bool AddPooling(Node* node, const std::string& kind) {
    Value* input = node->input(0);
    if (!IsTensor(input) || (Rank(input) != -1 && Rank(input) != 4)) return false;
    ChainOp op;
    if (kind == "aten::adaptive_avg_pool2d") {
      auto size = Ints(node->input(1), 2);
      if (!size) return false;
      op.kind = OpKind::kAdaptiveAvgPool;
      op.outputSize = *size;
    } else {
      bool max = kind == "aten::max_pool2d";
      auto kernel = Ints(node->input(1), 2), padding = Ints(node->input(3), 2);
      std::optional<c10::IValue> strideList = torch::jit::toIValue(node->input(2));
      if (!kernel || !padding || !strideList || !strideList->isIntList()) return false;
      auto stride = strideList->toIntVector().empty() ? kernel : Ints(node->input(2), 2);
      if (!stride) return false;
      op.kernel = *kernel, op.stride = *stride, op.padding = *padding;
      if (max) {
        auto dilation = Ints(node->input(4), 2);
        std::optional<bool> ceil = Bool(node->input(5));
        if (!dilation || !ceil) return false;
        op.kind = OpKind::kMaxPool;
        op.dilation = *dilation, op.ceilMode = *ceil;
      } else {
        std::optional<bool> ceil = Bool(node->input(4)), include = Bool(node->input(5));
        if (!ceil || !include || node->input(6)->type()->kind() != c10::TypeKind::NoneType) return false;
        op.kind = OpKind::kAvgPool;
        op.ceilMode = *ceil, op.countIncludePad = *include;
      }
    }
    op.inputs = {Id(input)};
    Push(node, std::move(op), 4);
    return true;
  }

  bool AddFlatten(Node* node) {
    Value* input = node->input(0);
    std::optional<int64_t> start = Int(node->input(1)), end = Int(node->input(2));
    // flatten(x, 1): every dimension after the batch's, whatever the rank (checked when planned).
    if (!IsTensor(input) || !start || !end || *start != 1 || !(*end == -1 || (*end == 3 && Rank(input) == 4))) return false;
    ChainOp op;
    op.kind = OpKind::kFlatten;
    op.inputs = {Id(input)};
    Push(node, std::move(op), 2);
    return true;
  }

  // The next node after `node` that is not a constant.
  static Node* NextOperation(Node* node) {
    Node* next = node->next();
    while (next->kind() == c10::prim::Constant) next = next->next();
    return next;
  }

  // `x.view(x.size(0), -1)` (or reshape), as ResNets end: on a value of the run with at least
  // two dimensions it is flatten(x, 1). Its three nodes come one after another in the graph and
  // are taken together, so that no chain ends between them.
  bool AddRowsView(Node* size) {
    Value* x = size->input(0);
    if (size->inputs().size() != 2 || Int(size->input(1)) != 0 || !Produced(x) || Rank(x) < 2) return false;
    Node* list = NextOperation(size);
    if (list->kind() != c10::prim::ListConstruct || list->inputs().size() != 2 || list->input(0) != size->output() ||
        Int(list->input(1)) != -1 || size->output()->uses().size() != 1 || list->output()->uses().size() != 1) {
      return false;
    }
    Node* view = NextOperation(list);
    if ((view->kind() != c10::aten::view && view->kind() != c10::aten::reshape) || view->input(0) != x ||
        view->input(1) != list->output()) {
      return false;
    }
    nodes_.push_back(size);
    nodes_.push_back(list);
    taken_.insert(list);
    taken_.insert(view);
    ChainOp op;
    op.kind = OpKind::kFlatten;
    op.inputs = {Id(x)};
    Push(view, std::move(op), 2);
    return true;
  }

  // TorchScript's adaptive_avg_pool2d with a tuple size first checks its input's rank:
  // `if len(x.size()) > k: pass, else: raise`. On a value of the run whose rank is known to be
  // more than k the check always passes, and its four nodes are taken into the run (and
  // removed), so that the chain goes on into the pooling.
  bool AddRankCheck(Node* size) {
    Value* x = size->input(0);
    if (!Produced(x) || Rank(x) < 0) return false;
    Node* len = NextOperation(size);
    if (len->kind() != c10::aten::len || len->input(0) != size->output() || size->output()->uses().size() != 1) return false;
    Node* gt = NextOperation(len);
    if (gt->kind() != c10::aten::gt || gt->input(0) != len->output() || len->output()->uses().size() != 1) return false;
    std::optional<int64_t> bound = Int(gt->input(1));
    if (!bound || Rank(x) <= *bound) return false;
    Node* check = NextOperation(gt);
    if (check->kind() != c10::prim::If || check->input(0) != gt->output() || gt->output()->uses().size() != 1 ||
        !check->outputs().empty() || check->blocks().size() != 2) {
      return false;
    }
    auto only = [](torch::jit::Block* block, std::optional<c10::Symbol> kind) {
      auto nodes = block->nodes();
      if (!kind) return nodes.begin() == nodes.end();
      return nodes.begin() != nodes.end() && nodes.front()->kind() == *kind && nodes.front()->next() == block->return_node();
    };
    if (!only(check->blocks()[0], std::nullopt) || !only(check->blocks()[1], c10::prim::RaiseException)) return false;
    for (Node* node : {size, len, gt, check}) {
      nodes_.push_back(node);
      taken_.insert(node);
    }
    return true;
  }

  bool Lower(torch::jit::Graph& graph) {
    std::set<Node*> members(nodes_.begin(), nodes_.end());
    // Outside tensors first, as the chain numbers them.
    std::vector<int> renumber(producer_.size(), -1);
    int next = 0;
    for (size_t id = 0; id < producer_.size(); ++id) {
      if (producer_[id] < 0) renumber[id] = next++;
    }
    spec_.inputs = next;
    for (size_t id = 0; id < producer_.size(); ++id) {
      if (producer_[id] >= 0) renumber[id] = next++;
    }
    spec_.values = next;
    for (ChainOp& op : spec_.ops) {
      for (int& input : op.inputs) input = renumber[input];
      op.output = renumber[op.output];
      for (PostOp& post : op.postOps) {
        if (post.add) post.operand = renumber[post.operand];
      }
    }
    std::vector<Value*> inputs(spec_.inputs, nullptr);
    for (Value* value : externals_) inputs[renumber[ids_.at(value)]] = value;
    // Every value of the run that anything outside it reads is an output.
    std::vector<Value*> outputs;
    for (Node* node : nodes_) {
      for (Value* value : node->outputs()) {
        for (const torch::jit::Use& use : value->uses()) {
          if (!members.count(use.user)) {
            outputs.push_back(value);
            spec_.outputs.push_back(renumber[ids_.at(value)]);
            break;
          }
        }
      }
    }
    if (outputs.empty()) return false;
    Node* last = nodes_.back();
    torch::jit::WithInsertPoint after(last->next());
    auto chain = c10::make_intrusive<Chain>(std::move(spec_));
    Value* constant = graph.insertConstant(c10::IValue(chain));
    Value* list = graph.insertNode(graph.createList(c10::TensorType::get(), inputs))->output();
    Node* call = graph.insertNode(graph.create(c10::Symbol::fromQualString(kChainOperator), {constant, list}, 1));
    call->output()->setType(c10::ListType::ofTensors());
    Node* unpack = graph.insertNode(graph.createListUnpack(call->output(), outputs.size()));
    for (size_t i = 0; i < outputs.size(); ++i) {
      unpack->output(i)->setType(outputs[i]->type());
      outputs[i]->replaceAllUsesAfterNodeWith(unpack, unpack->output(i));
    }
    for (auto node = nodes_.rbegin(); node != nodes_.rend(); ++node) (*node)->destroy();
    return true;
  }

  const NodeOrigins* origins_;
  ChainSpec spec_;
  std::unordered_map<Value*, int> ids_;
  std::vector<int> producer_;  // per id: the op that makes it, -1 for a tensor from before the run
  std::vector<int> rank_;      // per id: dimensions where known, else -1
  std::vector<Value*> externals_;
  std::vector<Node*> nodes_;
  std::set<Node*> taken_;  // nodes already in the run, taken with one before them
  bool heavy_ = false;
};

}  // namespace

std::string ChainsProblem() { return ""; }

int LowerToChains(torch::jit::Graph& graph, const NodeOrigins& origins) {
  int chains = 0;
  Builder builder(origins);
  std::vector<Node*> nodes(graph.block()->nodes().begin(), graph.block()->nodes().end());
  for (Node* node : nodes) {
    if (node->kind() == c10::prim::Constant) continue;
    if (builder.TryAdd(node)) continue;
    if (!builder.Empty()) {
      chains += builder.Flush(graph);
      if (builder.TryAdd(node)) continue;
    }
  }
  chains += builder.Flush(graph);
  torch::jit::EliminateDeadCode(graph.block());
  return chains;
}

namespace {

std::vector<c10::intrusive_ptr<Chain>> ChainsOf(torch::jit::Graph& graph) {
  std::vector<c10::intrusive_ptr<Chain>> chains;
  for (Node* node : graph.block()->nodes()) {
    if (node->kind() != c10::Symbol::fromQualString(kChainOperator)) continue;
    chains.push_back(torch::jit::toIValue(node->input(0))->toCustomClass<Chain>());
  }
  return chains;
}

}  // namespace

std::vector<std::vector<ChainShapeReport>> ReportChains(torch::jit::Graph& graph) {
  std::vector<std::vector<ChainShapeReport>> reports;
  for (const auto& chain : ChainsOf(graph)) {
    std::vector<ChainShapeReport>& shapes = reports.emplace_back();
    for (const Chain::PlanReport& plan : chain->Report()) {
      ChainShapeReport& report = shapes.emplace_back();
      report.shape = plan.shape;
      report.arenaBytes = plan.arenaBytes;
      for (const auto& step : plan.steps) report.steps.push_back({step.description, step.runs, step.nanoseconds});
    }
  }
  return reports;
}

void TimeChains(torch::jit::Graph& graph, bool timing) {
  for (const auto& chain : ChainsOf(graph)) chain->SetTiming(timing);
}

}  // namespace tee::onednn
