// An exported program written out as a TorchScript graph, so that the inference compiler
// (torchscript/inference_compiler.h) does for it exactly what it does for a TorchScript
// model: weights as constants, batch norm folded into convolutions, oneDNN where the build
// allows, and exit points kept as earlyexit::exit_point calls that no pass can move.
#pragma once

#include <torch/script.h>

#include <string>
#include <vector>

#include "exported/interpreter.h"

namespace tee {

// A new module whose forward computes `program` in eval mode with its weights as constants,
// and runs earlyexit::exit_point(i, output) where module `points[i]` ends (no other hooks).
// Every tensor the program says holds the batch, made before a point and read after it, goes
// through earlyexit::carry there (torchscript/batch_carry.h); `carryProblems` gets, per point,
// why one could not ("" where all could).
// Throws std::runtime_error naming the point or node when the program cannot be written so.
torch::jit::Module ProgramForInference(const ProgramGraph& program, const std::vector<std::string>& points,
                                       std::vector<std::string>& carryProblems);

}  // namespace tee
