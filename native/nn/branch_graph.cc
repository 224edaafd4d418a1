#include "nn/branch_graph.h"

#include <vector>

namespace tee {
namespace {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

class Writer {
 public:
  explicit Writer(Graph& graph) : graph_(graph) {}

  Value* Layer(const torch::nn::Module& module, Value* x) {
    namespace nn = torch::nn;
    if (const auto* sequential = dynamic_cast<const nn::SequentialImpl*>(&module)) {
      for (const nn::AnyModule& child : *sequential) {
        x = Layer(*child.ptr(), x);
        if (x == nullptr) return nullptr;
      }
      return x;
    }
    if (dynamic_cast<const nn::IdentityImpl*>(&module) != nullptr) return x;
    if (const auto* linear = dynamic_cast<const nn::LinearImpl*>(&module)) {
      at::Tensor bias = linear->bias;
      return Op(c10::aten::linear, {x, Constant(linear->weight.detach()), bias.defined() ? Constant(bias.detach()) : None()});
    }
    if (const auto* relu = dynamic_cast<const nn::ReLUImpl*>(&module)) {
      // In place, the module would change what it reads: the exit point's output.
      if (relu->options.inplace()) return nullptr;
      return Op(c10::aten::relu, {x});
    }
    if (const auto* pool = dynamic_cast<const nn::MaxPool2dImpl*>(&module)) {
      const auto& o = pool->options;
      return Op(c10::aten::max_pool2d, {x, Ints(o.kernel_size()), Ints(o.stride()), Ints(o.padding()), Ints(o.dilation()),
                                        Constant(o.ceil_mode())});
    }
    if (const auto* pool = dynamic_cast<const nn::AvgPool2dImpl*>(&module)) {
      const auto& o = pool->options;
      Value* divisor = o.divisor_override().has_value() ? Constant(*o.divisor_override()) : None();
      return Op(c10::aten::avg_pool2d, {x, Ints(o.kernel_size()), Ints(o.stride()), Ints(o.padding()), Constant(o.ceil_mode()),
                                        Constant(o.count_include_pad()), divisor});
    }
    if (const auto* pool = dynamic_cast<const nn::AdaptiveAvgPool2dImpl*>(&module)) {
      // A size left as None keeps the input's, known only when the model runs: runs as a module.
      std::vector<int64_t> size;
      for (const auto& extent : *pool->options.output_size()) {
        if (!extent.has_value()) return nullptr;
        size.push_back(*extent);
      }
      return Op(c10::aten::adaptive_avg_pool2d, {x, Constant(size)});
    }
    if (const auto* flatten = dynamic_cast<const nn::FlattenImpl*>(&module)) {
      return Op(c10::aten::flatten, {x, Constant(flatten->options.start_dim()), Constant(flatten->options.end_dim())});
    }
    return nullptr;
  }

  // Removes what was inserted, last first.
  void Undo() {
    for (auto node = made_.rbegin(); node != made_.rend(); ++node) (*node)->destroy();
    made_.clear();
  }

 private:
  Value* Keep(Value* value) {
    made_.push_back(value->node());
    return value;
  }
  Value* Constant(const c10::IValue& value) { return Keep(graph_.insertConstant(value)); }
  Value* None() { return Constant(c10::IValue()); }
  Value* Ints(c10::IntArrayRef values) { return Constant(values.vec()); }
  Value* Op(c10::Symbol kind, const std::vector<Value*>& inputs) {
    std::vector<torch::jit::NamedValue> args(inputs.begin(), inputs.end());
    return Keep(graph_.insert(kind, args));
  }

  Graph& graph_;
  std::vector<Node*> made_;
};

}  // namespace

Value* InsertBranchNodes(const torch::nn::Module& module, Graph& graph, Value* input) {
  Writer writer(graph);
  Value* output = writer.Layer(module, input);
  if (output == nullptr || output == input) writer.Undo();
  return output == input ? nullptr : output;
}

}  // namespace tee
