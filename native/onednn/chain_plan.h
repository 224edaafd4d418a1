// A chain made for one set of input shapes: every oneDNN primitive created, in the layout
// oneDNN picks for this CPU (format_tag::any) from the chain's first reorder to its last, the
// weights reordered once, and every intermediate placed in one arena whose offsets are planned
// once from the values' lifetimes. Running it calls nothing but primitive::execute.
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

#include <unordered_map>
#include <vector>

#include "onednn/chain_spec.h"

namespace tee::onednn {

// Weights reordered for a layout a primitive asked for, kept across plans: the batch sizes a
// chain sees mostly ask for the same layouts, and a big network's weights are not copied per shape.
struct WeightCache {
  std::vector<std::vector<std::pair<dnnl::memory::desc, dnnl::memory>>> byOp;
};

class ChainPlan {
 public:
  // Throws std::runtime_error naming the operation when oneDNN cannot run it for these shapes.
  ChainPlan(const ChainSpec& spec, const std::vector<std::vector<int64_t>>& inputDims, const dnnl::engine& engine,
            dnnl::stream& stream, WeightCache& weights);

  // Runs on contiguous float32 CPU inputs of the planned shapes; returns new plain tensors.
  // With `timed`, each primitive's time is added to its step's count (see Steps).
  std::vector<at::Tensor> Run(const std::vector<at::Tensor>& inputs, dnnl::stream& stream, bool timed);

  // What runs, in order: a line per primitive ("convolution brg_conv_fwd:avx512_core acdb ->
  // acdb 1x16x32x32 +add +relu"), reorders included, with its time over the timed runs.
  struct StepReport {
    std::string description;
    uint64_t runs = 0;
    uint64_t nanoseconds = 0;
  };
  std::vector<StepReport> Steps() const;
  void ResetTimes();
  size_t ArenaBytes() const { return arenaBytes_; }

 private:
  enum class Place { kArena, kInput, kOutput, kScratch };
  struct Buffer {
    Place place;
    int index = 0;  // input or output number
    size_t bytes = 0;
    int first = 0, last = -1;  // steps that make it and last read it
    size_t offset = 0;
  };
  struct Step {
    dnnl::primitive primitive;
    std::unordered_map<int, dnnl::memory> args;
    // The same arguments as the C API takes them, made once: dnnl::primitive::execute would
    // copy the map into a new vector on every call.
    std::vector<dnnl_exec_arg_t> cArgs;
    std::string description;
    uint64_t runs = 0, nanoseconds = 0;
  };
  static void Execute(Step& step, dnnl::stream& stream);
  struct Held {  // a value in one layout
    dnnl::memory::desc md;
    dnnl::memory memory;
    int buffer;
  };

  int NewBuffer(Place place, size_t bytes, int index = 0);
  dnnl::memory Bind(const dnnl::memory::desc& md, int buffer);
  // The value in layout `md`, reordered into the arena (once) when it is held otherwise;
  // marks it read by the next step that EmitReading adds.
  Held Get(int value, const dnnl::memory::desc& md);
  // A reorder of activations; throws where this oneDNN is known to get it wrong (torch_compat.h).
  dnnl::reorder Reorder(const dnnl::memory::desc& from, const dnnl::memory::desc& to) const;
  void Emit(dnnl::primitive primitive, std::unordered_map<int, dnnl::memory> args, std::string description,
            const std::vector<int>& reads);
  void EmitReading(dnnl::primitive primitive, std::unordered_map<int, dnnl::memory> args, std::string description);
  const dnnl::memory& Weights(size_t op, const ChainOp& spec, const dnnl::memory::desc& md, const dnnl::memory::desc& plain);
  // Post-ops and a user scratchpad: activations, and with `adds` the residual adds, their
  // operands in `addLayout` (or each in its own); post-op `sum` (when >= 0) as oneDNN's sum,
  // which adds into the destination's own memory.
  dnnl::primitive_attr Attributes(const ChainOp& op, const dnnl::memory::desc* addLayout, int sum, bool adds,
                                  std::string& described);
  // A convolution's or linear layer's primitive with its post-ops (see the .cc).
  template <typename Pd>
  struct Fused {
    Pd pd;
    std::string described;
    int sum = -1;                   // the post-op done as a sum into its operand's buffer, or -1
    bool relaid = false;            // residuals read in the layer's output layout (always, when it adds)
  };
  template <typename Pd, typename Make>
  Fused<Pd> WithPostOps(size_t index, const ChainOp& op, const Make& make);
  // The residual operands' memory and the destination (the summed operand's buffer, or a new one).
  template <typename Pd>
  dnnl::memory Destination(const ChainOp& op, const Fused<Pd>& fused, std::unordered_map<int, dnnl::memory>& args, int& buffer);
  void Scratchpad(const dnnl::memory::desc& md, std::unordered_map<int, dnnl::memory>& args);

  template <typename Primitive, typename Make, typename Describe>
  void PlanLayer(size_t index, const ChainOp& op, const Make& make, const dnnl::memory::desc& plainWeights,
                 const dnnl::memory::desc& bias, const Describe& describe);
  void PlanConvolution(size_t index, const ChainOp& op);
  void PlanLinear(size_t index, const ChainOp& op);
  void PlanEltwise(const ChainOp& op);
  void PlanAdd(const ChainOp& op);
  void PlanPooling(const ChainOp& op);
  void PlanUnevenPooling(const ChainOp& op, const dnnl::memory::dims& dims);
  void PlanFlatten(const ChainOp& op);
  void PlaceArena();

  const dnnl::engine& engine_;
  dnnl::stream& stream_;
  WeightCache& weights_;
  std::vector<Buffer> buffers_;
  std::vector<std::pair<dnnl::memory, int>> bound_;  // every memory object and its buffer
  std::vector<std::pair<dnnl::memory, int>> inputBound_, outputBound_;  // and the input or output it reads
  const ChainOp* planning_ = nullptr;  // the op being planned, named by errors
  int scratchBuffer_ = -1;
  size_t arenaBytes_ = 0;
  std::vector<std::vector<Held>> values_;            // per value: its layouts, the first its own
  std::vector<Step> steps_;
  std::vector<int> pendingReads_;
  int inputs_ = 0;
  std::vector<int> lastRead_;  // per value: the last op that reads it (ops.size() for an output)
  std::vector<bool> flat_;     // per value: made by flatten, so another value's memory
  std::vector<bool> linearOnly_;  // per value: read by linear layers alone, and not an output
  std::vector<std::vector<int64_t>> outputDims_;
  at::Tensor arena_, scratch_;
  std::vector<at::Tensor> constants_;  // matrices made for this shape (uneven adaptive pooling)
};

}  // namespace tee::onednn
