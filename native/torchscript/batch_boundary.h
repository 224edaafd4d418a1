// Where samples can leave a batch: analysis of a model's forward with every call inlined,
// so that a point nested in submodules (torchvision's `layer1.0`, reached through
// `_forward_impl` and a Sequential) is judged by everything that runs around it.
#pragma once

#include <torch/script.h>
#include <torch/csrc/jit/ir/ir.h>

#include <string>
#include <vector>

namespace tee {

// Whether `point`, a node of the graph's top-level block, is a batch boundary: nothing
// batch-sized made before it is read after it except `flowing`, the value that goes on.
// Tensors count, and numbers computed from them (a batch size read off the input early).
// Weights (attributes, constants) are not batch-sized; the instrumentation's own nodes do
// not count as readers.
bool IsBoundaryNode(torch::jit::Graph& graph, torch::jit::Node* point, torch::jit::Value* flowing);

// What makes `point` no batch boundary: the batch-sized values made before it and read
// after it, other than `flowing` (empty for a point that is not in the top-level block).
std::vector<torch::jit::Value*> LiveAcross(torch::jit::Graph& graph, torch::jit::Node* point, torch::jit::Value* flowing);

// Every tap (earlyexit::tap) in `block` and the blocks inside it, in order.
void CollectTaps(torch::jit::Block* block, std::vector<torch::jit::Node*>& taps);

// Every exit point (earlyexit::exit_point) of a compiled graph in `block` and the blocks
// inside it, in order.
void CollectExitPoints(torch::jit::Block* block, std::vector<torch::jit::Node*>& exits);

// The qualified name of the submodule `value` holds, when it is a chain of attribute reads
// from `self`.
bool ModulePath(torch::jit::Value* value, torch::jit::Value* self, std::string& path);

// How the forward of an instrumented model calls one of its modules.
struct CallSites {
  // Calls in one forward (calls in different branches of an if/else count once); -1 when
  // a call sits in a loop (any number).
  int count = 0;
  // Called once, unconditionally, and a batch boundary (see IsBoundaryNode).
  bool boundary = false;
};

CallSites AnalyzeCalls(const torch::jit::Module& root, const std::string& qualifiedName);

// Inlines every method and function call in `graph`, at every depth, from each callee's own
// graph. torch::jit::Inline takes the callee's cached optimized graph instead, which the
// executor replaces once a forward with gradients has run (training), and in which the taps
// of nested modules' calls are no longer found: module analysis must not depend on whether
// the model was trained in this process.
void InlineOwnGraphs(torch::jit::Graph& graph);

// A copy of the root's forward with every call inlined, and in it the taps that follow the
// calls of module `qualifiedName`; null when the forward is not a TorchScript graph.
std::shared_ptr<torch::jit::Graph> InlinedCallsOf(const torch::jit::Module& root, const std::string& qualifiedName,
                                                  std::vector<torch::jit::Node*>& calls);

// How many times the calls that `taps` follow run in one forward: 1 when they sit in
// different branches of if/else (only one runs), -1 when one sits in a loop, else their number.
int CountCalls(const std::vector<torch::jit::Node*>& taps);

}  // namespace tee
