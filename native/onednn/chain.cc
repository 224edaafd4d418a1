#include "onednn/chain.h"

#include <torch/library.h>

#include <stdexcept>

namespace tee::onednn {

Chain::Chain(ChainSpec spec) : spec_(std::move(spec)), engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {}

std::vector<at::Tensor> Chain::Run(const std::vector<at::Tensor>& given) {
  if (given.size() != static_cast<size_t>(spec_.inputs)) throw std::logic_error("oneDNN chain: wrong number of inputs");
  std::vector<at::Tensor> inputs;
  std::vector<std::vector<int64_t>> shapes;
  inputs.reserve(given.size());
  shapes.reserve(given.size());
  for (size_t i = 0; i < given.size(); ++i) {
    const at::Tensor& tensor = given[i];
    if (!tensor.device().is_cpu() || tensor.scalar_type() != at::kFloat || tensor.is_mkldnn()) {
      throw std::runtime_error(std::string("oneDNN chain: input ") + std::to_string(i) + " is " +
                               c10::toString(tensor.scalar_type()) + " on " + tensor.device().str() +
                               ": chains run float32 on the CPU; compile with optimize: false for this model");
    }
    inputs.push_back(tensor.contiguous());
    shapes.emplace_back(tensor.sizes().begin(), tensor.sizes().end());
  }
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = plans_.find(shapes);
  if (found == plans_.end()) {
    found = plans_.emplace(shapes, std::make_unique<ChainPlan>(spec_, shapes, engine_, stream_, weights_)).first;
  }
  return found->second->Run(inputs, stream_, timing_);
}

void Chain::SetTiming(bool timing) {
  std::lock_guard<std::mutex> lock(mutex_);
  timing_ = timing;
  if (!timing) return;
  for (auto& [shapes, plan] : plans_) plan->ResetTimes();
}

std::vector<Chain::PlanReport> Chain::Report() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<PlanReport> reports;
  for (const auto& [shapes, plan] : plans_) {
    std::string shape;
    for (const auto& dims : shapes) {
      shape += shape.empty() ? "" : ", ";
      for (size_t i = 0; i < dims.size(); ++i) shape += (i ? "x" : "") + std::to_string(dims[i]);
    }
    reports.push_back({shape, plan->ArenaBytes(), plan->Steps()});
  }
  return reports;
}

namespace {

std::vector<at::Tensor> RunChain(const c10::intrusive_ptr<Chain>& chain, std::vector<at::Tensor> inputs) {
  return chain->Run(inputs);
}

}  // namespace

TORCH_LIBRARY(tee_onednn, m) {
  m.class_<Chain>("Chain");
  m.def("chain(__torch__.torch.classes.tee_onednn.Chain chain, Tensor[] inputs) -> Tensor[]", RunChain);
}

}  // namespace tee::onednn
