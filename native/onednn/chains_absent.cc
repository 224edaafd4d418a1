// Chains where the addon was built without oneDNN 3 (LibTorch 1.13 links oneDNN 2.6).
#include "onednn/chains.h"

// Written by CMakeLists.txt: why the chains were left out.
#include "onednn_chains_absent.h"

namespace tee::onednn {

std::string ChainsProblem() { return TEE_ONEDNN_CHAINS_ABSENT; }

int LowerToChains(torch::jit::Graph&, const NodeOrigins&) { return 0; }

std::vector<std::vector<ChainShapeReport>> ReportChains(torch::jit::Graph&) { return {}; }

void TimeChains(torch::jit::Graph&, bool) {}

}  // namespace tee::onednn
