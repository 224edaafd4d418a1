// An nn branch's forward written as TorchScript graph nodes, so that a compiled model runs the
// branch inside its own graph, where a oneDNN chain takes it in with the layers before the exit
// (one primitive call instead of a LibTorch operator per layer, and no plain tensor between).
#pragma once

#include <torch/csrc/jit/ir/ir.h>
#include <torch/nn.h>

namespace tee {

// Inserts at the graph's insert point the nodes that compute `module` on `input`, its weights
// as constants, and returns their output; or inserts nothing and returns null when a layer is
// not one it writes (Sequential, Linear, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d to a set size,
// Flatten, Identity), so that the branch runs as a module, as before.
torch::jit::Value* InsertBranchNodes(const torch::nn::Module& module, torch::jit::Graph& graph, torch::jit::Value* input);

}  // namespace tee
