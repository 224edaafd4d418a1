#include "torchscript/graph_instrumentation.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>

#include <vector>

#include "hooks/forward_hooks.h"

namespace tee {
namespace {

using torch::jit::Block;
using torch::jit::Node;

c10::Symbol TapSymbol() { return c10::Symbol::fromQualString(kTapOperator); }

bool IsSubmoduleForward(const Node* node) {
  if (node->kind() != c10::prim::CallMethod || node->s(c10::attr::name) != "forward") return false;
  auto type = node->input(0)->type()->cast<c10::ClassType>();
  return type && type->is_module();
}

// Whether `tap` is the tap that instrumentation put after `call` (a second load of
// instrumentation must not tap twice).
bool IsTapOf(const Node* tap, const Node* call) {
  return tap->kind() == TapSymbol() && tap->inputs().size() == 3 && tap->input(2) == call->output();
}

void InstrumentBlock(Block* block, std::unordered_set<const c10::ClassType*>& called) {
  for (Node* node : block->nodes()) {
    for (Block* inner : node->blocks()) InstrumentBlock(inner, called);
    if (!IsSubmoduleForward(node)) continue;
    called.insert(node->input(0)->type()->expect<c10::ClassType>().get());
    if (IsTapOf(node->next()->next(), node)) continue;
    torch::jit::Graph* graph = node->owningGraph();
    torch::jit::WithInsertPoint after(node->next());
    std::vector<torch::jit::Value*> arguments(node->inputs().begin() + 1, node->inputs().end());
    torch::jit::Value* inputs = graph->insertNode(graph->createTuple(arguments))->output();
    graph->insertNode(graph->create(TapSymbol(), {node->input(0), inputs, node->output()}, 0));
  }
}

void StripBlock(Block* block) {
  for (auto it = block->nodes().begin(); it != block->nodes().end();) {
    Node* node = *it;
    ++it;
    for (Block* inner : node->blocks()) StripBlock(inner);
    if (node->kind() != TapSymbol()) continue;
    Node* tuple = node->input(1)->node();
    node->destroy();
    if (tuple->kind() == c10::prim::TupleConstruct && !tuple->hasUses()) tuple->destroy();
  }
}

template <typename Visit>
void ForEachGraph(const torch::jit::Module& root, Visit&& visit) {
  std::unordered_set<const c10::ClassType*> seen;
  for (const auto& module : root.modules()) {
    const c10::ClassType* type = module.type().get();
    if (!seen.insert(type).second) continue;
    for (torch::jit::Function* method : type->methods()) {
      if (auto* function = dynamic_cast<torch::jit::GraphFunction*>(method)) visit(function->graph()->block());
    }
  }
}

}  // namespace

std::unordered_set<const c10::ClassType*> InstrumentModule(const torch::jit::Module& root) {
  std::unordered_set<const c10::ClassType*> called;
  ForEachGraph(root, [&](Block* block) { InstrumentBlock(block, called); });
  return called;
}

void StripInstrumentation(const torch::jit::Module& root) {
  ForEachGraph(root, [](Block* block) { StripBlock(block); });
}

}  // namespace tee
