// Lowering a frozen graph to oneDNN primitive chains (issue 28): each maximal run of
// supported nodes in the forward's top-level block (convolution with batch norm already
// folded, ReLU/ReLU6/hardtanh/hardswish/GELU, residual add, max/average/adaptive average
// pooling, flatten, linear) becomes one call of a chain (onednn/chain.h) that keeps
// activations in oneDNN's own layout between its first reorder and its last. A run ends where
// anything else reads a value (an exit point, a shape read, an unsupported operation), so an
// exit point is always handed a plain tensor. Two shape reads are taken in: `x.view(x.size(0),
// -1)`, a flatten, and the rank check TorchScript puts before adaptive pooling. Built only
// against oneDNN 3; elsewhere ChainsProblem says why not.
#pragma once

#include <torch/csrc/jit/ir/ir.h>

#include <string>
#include <unordered_map>
#include <vector>

namespace tee::onednn {

// Why this build cannot lower to chains, or "".
std::string ChainsProblem();

// Words that name where a node came from in a chain's errors, for nodes the graph's own text
// does not place (an exit's branch written into the graph: "the branch hooked on 'layer1'").
using NodeOrigins = std::unordered_map<const torch::jit::Node*, std::string>;

// Replaces the runs in `graph` by chain calls; returns how many chains it made (0 when the
// graph has no convolution or linear layer on float32 CPU weights to build one around).
int LowerToChains(torch::jit::Graph& graph, const NodeOrigins& origins = {});

// What a chain ran for one input shape: its arena, and per primitive (reorders included) its
// description and, while timing was on, its runs and time.
struct ChainStep {
  std::string description;
  uint64_t runs = 0;
  uint64_t nanoseconds = 0;
};
struct ChainShapeReport {
  std::string shape;
  size_t arenaBytes = 0;
  std::vector<ChainStep> steps;
};

// For each chain call in `graph`, in order: a report per input shape run so far.
std::vector<std::vector<ChainShapeReport>> ReportChains(torch::jit::Graph& graph);

// Turns timing of every chain in `graph` on (counts reset) or off (counts kept).
void TimeChains(torch::jit::Graph& graph, bool timing);

}  // namespace tee::onednn
