#include "torchscript/batch_boundary.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>

#include <unordered_map>
#include <vector>

#include "hooks/forward_hooks.h"

namespace tee {
namespace {

using torch::jit::Block;
using torch::jit::Node;
using torch::jit::Value;

bool HoldsTensor(const c10::TypePtr& type) {
  if (type->kind() == c10::TypeKind::TensorType) return true;
  // Objects (submodules) hold parameters, not the batch.
  if (type->kind() == c10::TypeKind::ClassType) return false;
  for (const c10::TypePtr& contained : type->containedTypes()) {
    if (HoldsTensor(contained)) return true;
  }
  return false;
}

// Numbers carry the batch too: a batch size read off a tensor before a point (n = x.size(0))
// and used after it (view(n, -1)) no longer matches once samples left there.
bool HoldsNumber(const c10::TypePtr& type) {
  c10::TypeKind kind = type->kind();
  if (kind == c10::TypeKind::IntType || kind == c10::TypeKind::FloatType || kind == c10::TypeKind::NumberType) return true;
  if (kind == c10::TypeKind::ClassType) return false;
  for (const c10::TypePtr& contained : type->containedTypes()) {
    if (HoldsNumber(contained)) return true;
  }
  return false;
}

bool IsTap(const Node* node) { return node->kind() == c10::Symbol::fromQualString(kTapOperator); }

// Instrumentation's own nodes read values too; they do not make a value live. A carry
// reads a value to hand on its staying rows: what reads the carry's output is what counts.
bool IsCarry(const Node* node) { return node->kind() == c10::Symbol::fromQualString(kCarryOperator); }

bool IsInstrumentation(const Node* node) {
  if (IsTap(node) || IsCarry(node)) return true;
  if (node->kind() != c10::prim::TupleConstruct) return false;
  for (const torch::jit::Use& use : node->output()->uses()) {
    if (!IsTap(use.user)) return false;
  }
  return true;
}

// Values that cannot carry the batch: weights and settings.
bool IsAttribute(const Node* node) { return node->kind() == c10::prim::Constant || node->kind() == c10::prim::GetAttr; }

// The If and Loop nodes around `node`, outermost first, each with the block it is in.
std::vector<std::pair<Node*, size_t>> Nesting(Node* node) {
  std::vector<std::pair<Node*, size_t>> path;
  for (Block* block = node->owningBlock(); block->owningNode() != nullptr; block = block->owningNode()->owningBlock()) {
    Node* owner = block->owningNode();
    size_t index = 0;
    while (owner->blocks()[index] != block) index++;
    path.emplace(path.begin(), owner, index);
  }
  return path;
}

// Whether two calls can never both run: they sit in different branches of one If.
bool Exclusive(Node* a, Node* b) {
  auto pathA = Nesting(a);
  auto pathB = Nesting(b);
  for (size_t i = 0; i < pathA.size() && i < pathB.size(); ++i) {
    if (pathA[i].first != pathB[i].first) return false;
    if (pathA[i].second != pathB[i].second) return pathA[i].first->kind() == c10::prim::If;
  }
  return false;
}

// Whether `value` was computed from a tensor of the forward (not a weight): its sizes,
// numbers read off it, and arithmetic on those.
bool ReadsTensor(Value* value, std::unordered_map<Value*, bool>& known) {
  auto found = known.find(value);
  if (found != known.end()) return found->second;
  bool reads = false;
  if (!IsAttribute(value->node())) {
    for (Value* input : value->node()->inputs()) {
      if (!IsAttribute(input->node()) && (HoldsTensor(input->type()) || ReadsTensor(input, known))) reads = true;
      if (reads) break;
    }
  }
  known[value] = reads;
  return reads;
}

}  // namespace

void CollectTaps(Block* block, std::vector<Node*>& taps) {
  for (Node* node : block->nodes()) {
    for (Block* inner : node->blocks()) CollectTaps(inner, taps);
    if (IsTap(node)) taps.push_back(node);
  }
}

void CollectExitPoints(Block* block, std::vector<Node*>& exits) {
  for (Node* node : block->nodes()) {
    for (Block* inner : node->blocks()) CollectExitPoints(inner, exits);
    if (node->kind() == c10::Symbol::fromQualString(kExitPointOperator)) exits.push_back(node);
  }
}

bool IsBoundaryNode(torch::jit::Graph& graph, Node* point, Value* flowing) {
  return point->owningBlock() == graph.block() && LiveAcross(graph, point, flowing).empty();
}

std::vector<Value*> LiveAcross(torch::jit::Graph& graph, Node* point, Value* flowing) {
  Block* top = graph.block();
  std::vector<Value*> live;
  if (point->owningBlock() != top) return live;
  std::vector<Value*> before(graph.inputs().begin(), graph.inputs().end());
  for (Node* node : top->nodes()) {
    if (node == point) break;
    // A carry's output is the batch-sized value from there on.
    if (IsAttribute(node) || (IsInstrumentation(node) && !IsCarry(node))) continue;
    for (Value* output : node->outputs()) before.push_back(output);
  }
  std::unordered_map<Value*, bool> known;
  for (Value* value : before) {
    if (value == flowing) continue;
    if (!HoldsTensor(value->type()) && !(HoldsNumber(value->type()) && ReadsTensor(value, known))) continue;
    for (const torch::jit::Use& use : value->uses()) {
      if (IsInstrumentation(use.user)) continue;
      Node* user = use.user;
      while (user->owningBlock() != top) user = user->owningBlock()->owningNode();
      if (user != point && user->isAfter(point)) {
        live.push_back(value);
        break;
      }
    }
  }
  return live;
}

bool ModulePath(Value* value, Value* self, std::string& path) {
  std::vector<std::string> names;
  while (value != self) {
    Node* node = value->node();
    if (node->kind() != c10::prim::GetAttr) return false;
    names.push_back(node->s(c10::attr::name));
    value = node->input(0);
  }
  path.clear();
  for (auto name = names.rbegin(); name != names.rend(); ++name) path += (path.empty() ? "" : ".") + *name;
  return true;
}

int CountCalls(const std::vector<Node*>& taps) {
  for (Node* tap : taps) {
    for (const auto& level : Nesting(tap)) {
      if (level.first->kind() == c10::prim::Loop) return -1;
    }
  }
  // Calls in different branches of an if/else count once: only one of them runs.
  for (size_t i = 0; i < taps.size(); ++i) {
    for (size_t j = i + 1; j < taps.size(); ++j) {
      if (!Exclusive(taps[i], taps[j])) return static_cast<int>(taps.size());
    }
  }
  return taps.empty() ? 0 : 1;
}

namespace {

// One level: each call in `block` (and its nested blocks) replaced by its callee's own graph.
bool InlineOneLevel(Block* block) {
  bool inlined = false;
  for (auto it = block->nodes().begin(), end = block->nodes().end(); it != end;) {
    Node* node = *it++;
    torch::jit::GraphFunction* callee = nullptr;
    if (node->kind() == c10::prim::CallMethod) {
      if (auto type = node->input(0)->type()->cast<c10::ClassType>()) {
        callee = dynamic_cast<torch::jit::GraphFunction*>(&type->getMethod(node->s(c10::attr::name)));
      }
    } else if (node->kind() == c10::prim::CallFunction) {
      if (auto type = node->input(0)->type()->cast<c10::FunctionType>()) {
        callee = dynamic_cast<torch::jit::GraphFunction*>(type->function());
        // The function itself is the call's first input; its graph takes the rest.
        if (callee != nullptr) node->removeInput(0);
      }
    }
    if (callee != nullptr) {
      torch::jit::inlineCallTo(node, callee, callee->graph().get());
      inlined = true;
      continue;
    }
    for (Block* nested : node->blocks()) inlined = InlineOneLevel(nested) || inlined;
  }
  return inlined;
}

}  // namespace

void InlineOwnGraphs(torch::jit::Graph& graph) {
  while (InlineOneLevel(graph.block())) {
  }
}

std::shared_ptr<torch::jit::Graph> InlinedCallsOf(const torch::jit::Module& root, const std::string& qualifiedName,
                                                  std::vector<Node*>& calls) {
  auto method = root.find_method("forward");
  auto* function = method ? dynamic_cast<torch::jit::GraphFunction*>(&method->function()) : nullptr;
  if (function == nullptr) return nullptr;
  // A copy: the model's own graphs keep their calls (and the hooks that live at them).
  std::shared_ptr<torch::jit::Graph> graph = function->graph()->copy();
  InlineOwnGraphs(*graph);
  std::vector<Node*> taps;
  CollectTaps(graph->block(), taps);
  for (Node* tap : taps) {
    std::string path;
    if (ModulePath(tap->input(0), graph->inputs()[0], path) && path == qualifiedName) calls.push_back(tap);
  }
  return graph;
}

CallSites AnalyzeCalls(const torch::jit::Module& root, const std::string& qualifiedName) {
  CallSites sites;
  std::vector<Node*> calls;
  std::shared_ptr<torch::jit::Graph> graph = InlinedCallsOf(root, qualifiedName, calls);
  if (graph == nullptr) return sites;
  sites.count = CountCalls(calls);
  sites.boundary = calls.size() == 1 && IsBoundaryNode(*graph, calls[0], calls[0]->input(2));
  return sites;
}

}  // namespace tee
