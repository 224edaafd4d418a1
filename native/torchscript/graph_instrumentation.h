// Puts the tap operator of forward_hooks after every submodule forward call in the
// graphs of a loaded model, and takes it out again for saving.
#pragma once

#include <torch/script.h>

#include <unordered_set>

namespace tee {

// Instruments every method of every module type of `root` that was not instrumented
// yet. Must run before any method is called: an executor, once built, keeps its graph.
// Returns the module types that some graph calls through forward.
std::unordered_set<const c10::ClassType*> InstrumentModule(const torch::jit::Module& root);

// Removes the taps, so that the saved code is what the model had when loaded.
void StripInstrumentation(const torch::jit::Module& root);

}  // namespace tee
