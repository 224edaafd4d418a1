// A oneDNN chain as TorchScript sees it: a custom class held as a graph constant, and the
// operator tee_onednn::chain(chain, inputs) -> outputs that the lowered graph calls where the
// chain's nodes were. Each input shape gets its own plan (chain_plan.h), made on first use.
#pragma once

#include <torch/custom_class.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "onednn/chain_plan.h"
#include "onednn/chain_spec.h"

namespace tee::onednn {

constexpr const char* kChainOperator = "tee_onednn::chain";

class Chain : public torch::CustomClassHolder {
 public:
  explicit Chain(ChainSpec spec);

  // Throws std::runtime_error naming the input when it is no float32 CPU tensor.
  std::vector<at::Tensor> Run(const std::vector<at::Tensor>& inputs);

  // For each input shape run so far: the shape, the arena's size and the primitives in order,
  // with their times while timing was on.
  struct PlanReport {
    std::string shape;
    size_t arenaBytes = 0;
    std::vector<ChainPlan::StepReport> steps;
  };
  std::vector<PlanReport> Report();

  // Times every primitive from now on, counts reset (or stops, counts kept). Off by default: a
  // chain's run calls nothing but primitive::execute.
  void SetTiming(bool timing);

 private:
  ChainSpec spec_;
  std::mutex mutex_;
  bool timing_ = false;  // plans are made once per shape, and their arena is used by one forward at a time
  dnnl::engine engine_;
  dnnl::stream stream_;
  WeightCache weights_;
  std::map<std::vector<std::vector<int64_t>>, std::unique_ptr<ChainPlan>> plans_;
};

}  // namespace tee::onednn
