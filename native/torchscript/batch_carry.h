// Per-sample exits past skip connections and masks in a compiled model. When samples leave
// the batch at an exit point, a value made before the point and read after it (a residual
// block's input, a padding mask) must lose their rows too. Where the value holds the batch
// along dim 0, an earlyexit::carry after the point hands on its staying rows; where that
// cannot be told from the graph, per-sample exits at the point are refused, and the reason
// names the value.
#pragma once

#include <torch/csrc/jit/ir/ir.h>
#include <torch/script.h>

#include <string>
#include <vector>

namespace tee {

// Why samples cannot leave the batch alone at `point` (a node of `graph`'s top-level block,
// `flowing` the value that goes on from it), or "" when every batch-sized value read after
// it holds the batch along dim 0 (or there is none). `graph` is a forward with every call
// inlined, weights read as attributes or frozen into constants.
std::string CarryProblem(torch::jit::Graph& graph, torch::jit::Node* point, torch::jit::Value* flowing);

// The same for the uncompiled model: why, compiled with an exit at module `qualifiedName`,
// samples could not leave there alone ("" when they could). For messages.
std::string CarryProblemAt(const torch::jit::Module& root, const std::string& qualifiedName);

// After every earlyexit::exit_point of `graph` (inlined or frozen) whose live values can all
// be carried, inserts the carries and sends every later read through them. `problems` holds,
// per point index, why values cannot be carried past it: points that come in with a reason
// are left alone, and the others go out with theirs ("" where all could, or nothing needed
// carrying).
void CarryPastExitPoints(torch::jit::Graph& graph, std::vector<std::string>& problems);

// Inserts earlyexit::carry(point, value) right after `after` and sends every later read of
// `value` through it; returns the carry's output.
torch::jit::Value* InsertCarry(torch::jit::Graph& graph, torch::jit::Node* after, int64_t point, torch::jit::Value* value);

}  // namespace tee
