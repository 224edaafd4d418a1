// Compiles a loaded model for inference with its exit points in place: the taps of the
// chosen points are keyed by their index (module objects do not survive freezing, which
// clones and inlines), every other tap is dropped, then LibTorch's freezing (constants,
// batch norm folded into convolutions) and, optionally, optimize_for_inference (oneDNN
// prepacked convolutions, fused conv-add-relu) run over what is left. An exit point stays
// a side effect that consumes the module's output and returns what the rest of the graph
// reads, so no pass can move work across it, and a per-sample exit can shrink the batch.
#pragma once

#include <torch/script.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "hooks/forward_hooks.h"

namespace tee {

struct InferenceModel {
  torch::jit::Module module;
  // Point i of the compiled graph runs the hooks of this module object of the source model.
  ExitPointTable points;
  std::vector<std::string> pointNames;
  // Per point: whether samples can leave the batch there (the point's output, and the
  // carries after it, are the only batch-sized values the rest of the compiled forward reads),
  // and where they cannot, why.
  std::vector<bool> batchBoundaries;
  std::vector<std::string> perSampleProblems;
  // How it was compiled: "oneDNN chains" (frozen, then runs of supported operations lowered
  // to oneDNN primitive chains: onednn/chains.h), "oneDNN" (frozen, then
  // optimize_for_inference) or "frozen".
  std::string optimization;

  // What the compiled model was made from, to refuse to run it once that changed.
  std::shared_ptr<const HookMap> hooks;
  uint64_t generation = 0;
  std::vector<std::pair<std::string, at::Tensor>> watched;
  std::vector<uint32_t> versions;

  // Why the compiled model no longer computes what the source model does, or "" if it does.
  std::string StaleReason(const std::shared_ptr<const HookMap>& currentHooks, uint64_t currentGeneration) const;
};

// How far to go after freezing: kFrozen stops there; kOneDnn also runs optimize_for_inference
// (oneDNN prepacked convolutions, fusions) and fails where that is known to crash; kChains
// lowers to oneDNN primitive chains and fails where the build has none or nothing could be
// lowered; kAuto is kChains where the build has them, else kOneDnn where it works, else kFrozen.
enum class Optimization { kFrozen, kOneDnn, kChains, kAuto };

// Makes the module that freezing starts from: a copy of the model in eval mode whose forward
// runs earlyexit::exit_point(i, output) where module points[i] ends, and no other hook, with
// the carries after each point (torchscript/batch_carry.h); `carryProblems` gets, per point,
// why values could not be carried past it. Left empty, the model's own TorchScript forward is
// cloned and its taps keyed so; an exported program writes its graph out instead
// (exported/inference_graph.h).
using KeyedForInference =
    std::function<torch::jit::Module(const std::vector<std::string>& points, std::vector<std::string>& carryProblems)>;

// Why optimize_for_inference cannot run with this LibTorch, or "" when it can.
std::string OneDnnProblem();

// Compiles `root` (which must be in eval mode) with exits at `points` (qualified module
// names). Throws std::runtime_error naming the point when one cannot be kept.
std::shared_ptr<InferenceModel> CompileForInference(const torch::jit::Module& root, const std::vector<std::string>& points,
                                                    std::shared_ptr<const HookMap> hooks, uint64_t generation,
                                                    Optimization optimization, const KeyedForInference& keyed);

// The same without exit points: the plain model frozen and optimized, as
// torch.jit.optimize_for_inference makes it; `applied` says which optimization ran.
torch::jit::Module CompilePlainForInference(const torch::jit::Module& root, Optimization optimization, std::string& applied,
                                            const KeyedForInference& keyed);

}  // namespace tee
