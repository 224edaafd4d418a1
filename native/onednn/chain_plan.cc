#include "onednn/chain_plan.h"

#include <oneapi/dnnl/dnnl_version.h>

#include "onednn/layout_copy.h"
#include "torch_compat.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace tee::onednn {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;
constexpr memory::data_type kF32 = memory::data_type::f32;
constexpr size_t kAlign = 64;

[[noreturn]] void Fail(const ChainOp& op, const std::string& why) {
  throw std::runtime_error("oneDNN chain: " + op.where + ": " + why);
}

// Row-major, as a contiguous torch tensor of these dims is laid out.
memory::desc Plain(const memory::dims& dims) {
  memory::dims strides(dims.size(), 1);
  for (int i = static_cast<int>(dims.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * std::max<int64_t>(dims[i + 1], 1);
  return memory::desc(dims, kF32, strides);
}

// oneDNN's name for a layout: dimensions from outermost, a blocked one in capitals, then the
// blocks ("aBcd16b": channels in blocks of 16; "acdb": channels last).
std::string Layout(const memory::desc& md) {
  if (md.get_format_kind() != memory::format_kind::blocked) return "opaque";
  memory::dims strides = md.get_strides(), blocks = md.get_inner_blks(), indices = md.get_inner_idxs();
  std::vector<int> order(strides.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return strides[a] > strides[b]; });
  std::string layout;
  for (int dim : order) {
    bool blocked = std::find(indices.begin(), indices.end(), dim) != indices.end();
    layout += static_cast<char>((blocked ? 'A' : 'a') + dim);
  }
  for (size_t i = 0; i < blocks.size(); ++i) layout += std::to_string(blocks[i]) + static_cast<char>('a' + indices[i]);
  return layout;
}

dnnl::algorithm Algorithm(Activation activation) {
  switch (activation) {
    case Activation::kRelu: return dnnl::algorithm::eltwise_relu;
    case Activation::kClip: return dnnl::algorithm::eltwise_clip_v2;
    case Activation::kHardswish: return dnnl::algorithm::eltwise_hardswish;
    case Activation::kGeluErf: return dnnl::algorithm::eltwise_gelu_erf;
    case Activation::kGeluTanh: return dnnl::algorithm::eltwise_gelu_tanh;
  }
  return dnnl::algorithm::eltwise_relu;
}

const char* ActivationName(Activation activation) {
  switch (activation) {
    case Activation::kRelu: return "relu";
    case Activation::kClip: return "clip";
    case Activation::kHardswish: return "hardswish";
    case Activation::kGeluErf: return "gelu";
    case Activation::kGeluTanh: return "gelu_tanh";
  }
  return "?";
}

std::string DimsText(const memory::dims& dims) {
  std::string text;
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? "x" : "") + std::to_string(dims[i]);
  return text;
}

// Moves a convolution's `pd` past oneDNN's brgemm kernels where the jit ones serve it better
// (torch_compat.h: TEE_ONEDNN_PREFER_JIT).
template <typename Pd>
void PreferJitKernels(Pd& pd) {
  auto brgemm = [](const std::string& kernel) { return kernel.rfind("brg", 0) == 0 || kernel.rfind("brdgmm", 0) == 0; };
  while (TEE_ONEDNN_PREFER_JIT && brgemm(pd.impl_info_str()) && pd.next_impl()) {
  }
}

// Output size of a window of `extent` elements, as PyTorch's pooling computes it.
int64_t PooledSize(int64_t size, int64_t extent, int64_t stride, int64_t pad, bool ceil) {
  int64_t span = size + 2 * pad - extent;
  int64_t out = (ceil ? (span + stride - 1) / stride : span / stride) + 1;
  if (ceil && (out - 1) * stride >= size + pad) --out;
  return out;
}

}  // namespace

ChainPlan::ChainPlan(const ChainSpec& spec, const std::vector<std::vector<int64_t>>& inputDims, const dnnl::engine& engine,
                     dnnl::stream& stream, WeightCache& weights)
    : engine_(engine), stream_(stream), weights_(weights) {
  values_.resize(spec.values);
  inputs_ = spec.inputs;
  lastRead_.assign(spec.values, -1);
  flat_.assign(spec.values, false);
  linearOnly_.assign(spec.values, true);
  for (int output : spec.outputs) lastRead_[output] = static_cast<int>(spec.ops.size()), linearOnly_[output] = false;
  for (const ChainOp& op : spec.ops) {
    for (size_t k = 0; k < op.inputs.size(); ++k) {
      if (op.kind != OpKind::kLinear || k > 0) linearOnly_[op.inputs[k]] = false;
    }
    for (const PostOp& post : op.postOps) {
      if (post.add) linearOnly_[post.operand] = false;
    }
  }
  for (int index = static_cast<int>(spec.ops.size()) - 1; index >= 0; --index) {
    const ChainOp& op = spec.ops[index];
    auto read = [&](int value) { lastRead_[value] = std::max(lastRead_[value], index); };
    for (int input : op.inputs) read(input);
    for (const PostOp& post : op.postOps) {
      if (post.add) read(post.operand);
    }
    // A flat value is its input's memory: what reads it reads the input.
    if (op.kind == OpKind::kFlatten) {
      lastRead_[op.inputs[0]] = std::max(lastRead_[op.inputs[0]], lastRead_[op.output]);
      flat_[op.output] = true;
    }
  }
  for (int i = 0; i < spec.inputs; ++i) {
    memory::desc md = Plain(memory::dims(inputDims[i].begin(), inputDims[i].end()));
    int buffer = NewBuffer(Place::kInput, md.get_size(), i);
    values_[i].push_back({md, Bind(md, buffer), buffer});
  }
  scratchBuffer_ = NewBuffer(Place::kScratch, 0);
  if (weights_.byOp.size() < spec.ops.size()) weights_.byOp.resize(spec.ops.size());
  for (size_t index = 0; index < spec.ops.size(); ++index) {
    const ChainOp& op = spec.ops[index];
    planning_ = &op;
    try {
      switch (op.kind) {
        case OpKind::kConvolution: PlanConvolution(index, op); break;
        case OpKind::kLinear: PlanLinear(index, op); break;
        case OpKind::kEltwise: PlanEltwise(op); break;
        case OpKind::kAdd: PlanAdd(op); break;
        case OpKind::kMaxPool:
        case OpKind::kAvgPool:
        case OpKind::kAdaptiveAvgPool: PlanPooling(op); break;
        case OpKind::kFlatten: PlanFlatten(op); break;
      }
    } catch (const dnnl::error& error) {
      Fail(op, std::string("oneDNN refused it: ") + error.what());
    }
  }
  planning_ = nullptr;
  for (size_t k = 0; k < spec.outputs.size(); ++k) {
    Held held = values_[spec.outputs[k]][0];
    memory::dims dims = held.md.get_dims();
    memory::desc plain = Plain(dims);
    int buffer = NewBuffer(Place::kOutput, plain.get_size(), static_cast<int>(k));
    memory to = Bind(plain, buffer);
    Emit(Reorder(held.md, plain), {{DNNL_ARG_FROM, held.memory}, {DNNL_ARG_TO, to}},
         "reorder " + Layout(held.md) + " -> " + Layout(plain) + " (output " + DimsText(dims) + ")", {held.buffer});
    outputDims_.emplace_back(dims.begin(), dims.end());
  }
  PlaceArena();
}

int ChainPlan::NewBuffer(Place place, size_t bytes, int index) {
  Buffer buffer;
  buffer.place = place;
  buffer.index = index;
  buffer.bytes = bytes;
  buffer.first = static_cast<int>(steps_.size());
  buffers_.push_back(buffer);
  return static_cast<int>(buffers_.size()) - 1;
}

memory ChainPlan::Bind(const memory::desc& md, int buffer) {
  memory made(md, engine_, DNNL_MEMORY_NONE);
  bound_.emplace_back(made, buffer);
  return made;
}

ChainPlan::Held ChainPlan::Get(int value, const memory::desc& md) {
  std::vector<Held>& held = values_.at(value);
  if (held.empty()) throw std::logic_error("oneDNN chain: value read before it is made");
  for (const Held& layout : held) {
    if (layout.md == md) {
      pendingReads_.push_back(layout.buffer);
      return layout;
    }
  }
  Held from = held[0];
  int buffer = NewBuffer(Place::kArena, md.get_size());
  memory to = Bind(md, buffer);
  Emit(Reorder(from.md, md), {{DNNL_ARG_FROM, from.memory}, {DNNL_ARG_TO, to}},
       "reorder " + Layout(from.md) + " -> " + Layout(md) + " (" + DimsText(md.get_dims()) + ")", {from.buffer});
  held.push_back({md, to, buffer});
  pendingReads_.push_back(buffer);
  return held.back();
}

dnnl::reorder ChainPlan::Reorder(const memory::desc& from, const memory::desc& to) const {
  if (TEE_ONEDNN_REORDER_WRONG && (BlocksTwoDims(from) || BlocksTwoDims(to))) {
    std::string why = "needs a reorder from " + Layout(from) + " to " + Layout(to) + " (" + DimsText(from.get_dims()) +
                      "), which this oneDNN (" + std::to_string(DNNL_VERSION_MAJOR) + "." + std::to_string(DNNL_VERSION_MINOR) +
                      ") computes wrongly (oneDNN issue 3280)";
    if (planning_ != nullptr) Fail(*planning_, why);
    throw std::runtime_error("oneDNN chain: its output " + why);
  }
  return dnnl::reorder(dnnl::reorder::primitive_desc(engine_, from, engine_, to));
}

void ChainPlan::Emit(dnnl::primitive primitive, std::unordered_map<int, memory> args, std::string description,
                     const std::vector<int>& reads) {
  Step made;
  made.primitive = std::move(primitive);
  made.args = std::move(args);
  made.description = std::move(description);
  steps_.push_back(std::move(made));
  int step = static_cast<int>(steps_.size()) - 1;
  for (int buffer : reads) buffers_[buffer].last = std::max(buffers_[buffer].last, step);
}

void ChainPlan::EmitReading(dnnl::primitive primitive, std::unordered_map<int, memory> args, std::string description) {
  std::vector<int> reads;
  reads.swap(pendingReads_);
  Emit(std::move(primitive), std::move(args), std::move(description), reads);
}

const memory& ChainPlan::Weights(size_t op, const ChainOp& spec, const memory::desc& md, const memory::desc& plain) {
  auto& cached = weights_.byOp[op];
  for (const auto& [layout, weights] : cached) {
    if (layout == md) return weights;
  }
  memory to(md, engine_);
  if (TEE_ONEDNN_REORDER_WRONG) {
    CopyIntoLayout(spec.weight.data_ptr<float>(), md, static_cast<float*>(to.get_data_handle()));
  } else {
    memory from(plain, engine_, spec.weight.data_ptr());
    dnnl::reorder(from, to).execute(stream_, from, to);
    stream_.wait();
  }
  cached.emplace_back(md, to);
  return cached.back().second;
}

dnnl::primitive_attr ChainPlan::Attributes(const ChainOp& op, const memory::desc* addLayout, int sum, bool adds,
                                            std::string& described) {
  dnnl::post_ops postOps;
  for (size_t i = 0; i < op.postOps.size(); ++i) {
    const PostOp& post = op.postOps[i];
    if (post.add && !adds) continue;
    if (static_cast<int>(i) == sum) {
      postOps.append_sum(1.f);
      described += " +add(in place)";
    } else if (post.add) {
      postOps.append_binary(dnnl::algorithm::binary_add, addLayout ? *addLayout : values_.at(post.operand)[0].md);
      described += " +add";
    } else {
      float alpha = post.alpha, beta = post.beta;
      if (post.activation == Activation::kHardswish) alpha = 1.f / 6.f, beta = 0.5f;
      postOps.append_eltwise(Algorithm(post.activation), alpha, beta);
      described += std::string(" +") + ActivationName(post.activation);
    }
  }
  dnnl::primitive_attr attr;
  attr.set_post_ops(postOps);
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

void ChainPlan::Scratchpad(const memory::desc& md, std::unordered_map<int, memory>& args) {
  buffers_[scratchBuffer_].bytes = std::max(buffers_[scratchBuffer_].bytes, md.get_size());
  args[DNNL_ARG_SCRATCHPAD] = Bind(md, scratchBuffer_);
}

// Makes the primitive with its post-ops. A residual held in another layout than the layer
// writes is reordered to it, so the add reads both alike. The first residual that nothing reads
// after this layer, held in that layout, is added as oneDNN's sum: the layer writes into the
// residual's own buffer, which is cheaper than a binary post-op reading a second tensor.
template <typename Pd, typename Make>
ChainPlan::Fused<Pd> ChainPlan::WithPostOps(size_t index, const ChainOp& op, const Make& make) {
  std::string described;
  // The layout the layer writes when residuals do not sway it: they are reordered to it.
  Pd probe = make(Attributes(op, nullptr, -1, false, described));
  memory::desc layout = probe.dst_desc();
  bool adds = false;
  int sum = -1;
  for (size_t i = 0; i < op.postOps.size(); ++i) {
    const PostOp& post = op.postOps[i];
    if (!post.add) continue;
    adds = true;
    int value = post.operand;
    if (sum >= 0 || value < inputs_ || flat_[value] || lastRead_[value] != static_cast<int>(index) || value == op.inputs[0]) continue;
    for (const Held& held : values_[value]) {
      if (held.md == layout) sum = static_cast<int>(i);
    }
  }
  if (!adds) return {probe, described, -1, false};
  described.clear();
  Pd fused = make(Attributes(op, &layout, sum, true, described));
  if (fused.dst_desc() == layout) return {fused, described, sum, true};
  // The layer chose another layout with the sum: binary adds, residuals reordered to the layout it writes.
  described.clear();
  layout = fused.dst_desc();
  return {make(Attributes(op, &layout, -1, true, described)), described, -1, true};
}

template <typename Pd>
memory ChainPlan::Destination(const ChainOp& op, const Fused<Pd>& fused, std::unordered_map<int, memory>& args, int& buffer) {
  memory::desc dst = fused.pd.dst_desc();
  for (size_t i = 0; i < op.postOps.size(); ++i) {
    const PostOp& post = op.postOps[i];
    if (!post.add) continue;
    const memory::desc& own = values_.at(post.operand)[0].md;
    if (own.get_dims() != dst.get_dims()) {
      Fail(op, "adds a " + DimsText(own.get_dims()) + " tensor to its " + DimsText(dst.get_dims()) +
                   " output: a chain adds tensors of one shape only");
    }
    if (static_cast<int>(i) == fused.sum) continue;
    args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(static_cast<int>(i)) | DNNL_ARG_SRC_1] = Get(post.operand, fused.relaid ? dst : own).memory;
  }
  if (fused.sum >= 0) {
    for (const Held& held : values_[op.postOps[fused.sum].operand]) {
      if (held.md == dst) buffer = held.buffer;
    }
    pendingReads_.push_back(buffer);
  } else {
    buffer = NewBuffer(Place::kArena, dst.get_size());
  }
  memory out = Bind(dst, buffer);
  args[DNNL_ARG_DST] = out;
  return out;
}

// A convolution or linear layer: its primitive with post-ops, its weights reordered once, its
// source, residuals and destination bound.
template <typename Primitive, typename Make, typename Describe>
void ChainPlan::PlanLayer(size_t index, const ChainOp& op, const Make& make, const memory::desc& plainWeights,
                          const memory::desc& bias, const Describe& describe) {
  auto fused = WithPostOps<typename Primitive::primitive_desc>(index, op, make);
  const auto& pd = fused.pd;
  std::unordered_map<int, memory> args;
  args[DNNL_ARG_SRC] = Get(op.inputs[0], pd.src_desc()).memory;
  args[DNNL_ARG_WEIGHTS] = Weights(index, op, pd.weights_desc(), plainWeights);
  if (op.bias.defined()) args[DNNL_ARG_BIAS] = memory(bias, engine_, op.bias.data_ptr());
  Scratchpad(pd.scratchpad_desc(), args);
  int buffer;
  memory out = Destination(op, fused, args, buffer);
  EmitReading(Primitive(pd), std::move(args), describe(pd) + fused.described);
  values_[op.output] = {{pd.dst_desc(), out, buffer}};
}

void ChainPlan::PlanConvolution(size_t index, const ChainOp& op) {
  memory::dims dims = values_.at(op.inputs[0])[0].md.get_dims();
  if (dims.size() != 4) Fail(op, "needs a 4-D input (batch, channels, height, width), not " + DimsText(dims));
  int64_t n = dims[0], c = dims[1], h = dims[2], w = dims[3];
  at::IntArrayRef shape = op.weight.sizes();
  int64_t o = shape[0], ig = shape[1], kh = shape[2], kw = shape[3], g = op.groups;
  if (c != ig * g) Fail(op, "its input has " + std::to_string(c) + " channels, its weights expect " + std::to_string(ig * g));
  int64_t oh = (h + 2 * op.padding[0] - op.dilation[0] * (kh - 1) - 1) / op.stride[0] + 1;
  int64_t ow = (w + 2 * op.padding[1] - op.dilation[1] * (kw - 1) - 1) / op.stride[1] + 1;
  if (oh <= 0 || ow <= 0) Fail(op, "its " + DimsText(dims) + " input is smaller than its kernel");
  memory::dims weightDims = g == 1 ? memory::dims{o, ig, kh, kw} : memory::dims{g, o / g, ig, kh, kw};
  memory::desc plainWeights(weightDims, kF32, g == 1 ? Tag::oihw : Tag::goihw);
  memory::desc src({n, c, h, w}, kF32, Tag::any), weights(weightDims, kF32, Tag::any), dst({n, o, oh, ow}, kF32, Tag::any);
  // A first layer (a few channels, given plain) reads its input as it is: oneDNN has kernels for
  // that, where reordering a 3-channel image to a blocked layout costs more than it saves.
  if (op.inputs[0] < inputs_ && c <= 4) src = values_[op.inputs[0]][0].md;
  memory::desc bias({o}, kF32, Tag::x);
  memory::dims strides{op.stride[0], op.stride[1]}, dilates{op.dilation[0] - 1, op.dilation[1] - 1},
      padding{op.padding[0], op.padding[1]};
  auto make = [&](const dnnl::primitive_attr& attr) {
    using Pd = dnnl::convolution_forward::primitive_desc;
    auto kind = dnnl::prop_kind::forward_inference;
    auto direct = dnnl::algorithm::convolution_direct;
    Pd pd = op.bias.defined() ? Pd(engine_, kind, direct, src, weights, bias, dst, strides, dilates, padding, padding, attr)
                              : Pd(engine_, kind, direct, src, weights, dst, strides, dilates, padding, padding, attr);
    PreferJitKernels(pd);
    return pd;
  };
  if (TEE_ONEDNN_PREFER_JIT && op.inputs[0] >= inputs_) {
    // The jit kernels read the layout they are given: the producer's, where one takes it.
    src = values_[op.inputs[0]][0].md;
    std::string unused;
    bool jit = false;
    try {
      std::string kernel = make(Attributes(op, nullptr, -1, false, unused)).impl_info_str();
      jit = kernel.rfind("jit", 0) == 0;
    } catch (const dnnl::error&) {
    }
    // Only a jit kernel for it: else what `any` finds, reorder included.
    if (!jit) src = memory::desc({n, c, h, w}, kF32, Tag::any);
  }
  PlanLayer<dnnl::convolution_forward>(index, op, make, plainWeights, bias, [](const auto& pd) {
    return "convolution " + std::string(pd.impl_info_str()) + " " + Layout(pd.src_desc()) + " -> " + Layout(pd.dst_desc()) +
           " " + DimsText(pd.dst_desc().get_dims());
  });
}

void ChainPlan::PlanLinear(size_t index, const ChainOp& op) {
  const memory::desc& held = values_.at(op.inputs[0])[0].md;
  memory::dims dims = held.get_dims();
  // More than two dimensions only as a flatten's value that linear layers alone read (PlanFlatten).
  if (dims.size() != 2 && !(flat_[op.inputs[0]] && dims.size() >= 3)) {
    Fail(op, "needs a 2-D input (batch, features), not " + DimsText(dims));
  }
  int64_t features = 1;
  for (size_t d = 1; d < dims.size(); ++d) features *= dims[d];
  int64_t o = op.weight.size(0), i = op.weight.size(1);
  if (features != i) Fail(op, "its input has " + std::to_string(features) + " features, its weights expect " + std::to_string(i));
  memory::dims weightDims = dims;
  weightDims[0] = o;
  // An image batch is read in the layout it is held in, where a kernel takes it; else in the one oneDNN picks.
  memory::desc src = dims.size() == 2 ? memory::desc(dims, kF32, Tag::any) : held;
  memory::desc weights(weightDims, kF32, Tag::any), dst({dims[0], o}, kF32, Tag::any);
  memory::desc bias({o}, kF32, Tag::x), plainWeights = Plain(weightDims);
  auto make = [&](const dnnl::primitive_attr& attr) {
    using Pd = dnnl::inner_product_forward::primitive_desc;
    auto kind = dnnl::prop_kind::forward_inference;
    return op.bias.defined() ? Pd(engine_, kind, src, weights, bias, dst, attr) : Pd(engine_, kind, src, weights, dst, attr);
  };
  if (dims.size() > 2) {
    std::string unused;
    try {
      make(Attributes(op, nullptr, -1, false, unused));
    } catch (const dnnl::error&) {
      src = memory::desc(dims, kF32, Tag::any);
    }
  }
  PlanLayer<dnnl::inner_product_forward>(index, op, make, plainWeights, bias, [](const auto& pd) {
    std::string images = pd.src_desc().get_ndims() > 2 ? Layout(pd.src_desc()) + " -> " : "";
    return "linear " + std::string(pd.impl_info_str()) + " " + images + DimsText(pd.dst_desc().get_dims());
  });
}

void ChainPlan::PlanEltwise(const ChainOp& op) {
  memory::desc md = values_.at(op.inputs[0])[0].md;
  float alpha = op.alpha, beta = op.beta;
  if (op.activation == Activation::kHardswish) alpha = 1.f / 6.f, beta = 0.5f;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::eltwise_forward::primitive_desc pd(engine_, dnnl::prop_kind::forward_inference, Algorithm(op.activation), md, md, alpha,
                                           beta, attr);
  std::unordered_map<int, memory> args;
  args[DNNL_ARG_SRC] = Get(op.inputs[0], md).memory;
  Scratchpad(pd.scratchpad_desc(), args);
  int buffer = NewBuffer(Place::kArena, md.get_size());
  memory out = Bind(md, buffer);
  args[DNNL_ARG_DST] = out;
  EmitReading(dnnl::eltwise_forward(pd), std::move(args), std::string(ActivationName(op.activation)) + " " + Layout(md));
  values_[op.output] = {{md, out, buffer}};
}

void ChainPlan::PlanAdd(const ChainOp& op) {
  memory::desc md = values_.at(op.inputs[0])[0].md;
  memory::desc other = values_.at(op.inputs[1])[0].md;
  if (md.get_dims() != other.get_dims()) {
    Fail(op, "adds a " + DimsText(other.get_dims()) + " tensor to a " + DimsText(md.get_dims()) +
                 " one: a chain adds tensors of one shape only");
  }
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::binary::primitive_desc pd(engine_, dnnl::algorithm::binary_add, md, md, md, attr);
  std::unordered_map<int, memory> args;
  args[DNNL_ARG_SRC_0] = Get(op.inputs[0], md).memory;
  args[DNNL_ARG_SRC_1] = Get(op.inputs[1], md).memory;
  Scratchpad(pd.scratchpad_desc(), args);
  int buffer = NewBuffer(Place::kArena, md.get_size());
  memory out = Bind(md, buffer);
  args[DNNL_ARG_DST] = out;
  EmitReading(dnnl::binary(pd), std::move(args), "add " + Layout(md));
  values_[op.output] = {{md, out, buffer}};
}

void ChainPlan::PlanPooling(const ChainOp& op) {
  memory::desc md = values_.at(op.inputs[0])[0].md;
  memory::dims dims = md.get_dims();
  if (dims.size() != 4) Fail(op, "needs a 4-D input (batch, channels, height, width), not " + DimsText(dims));
  memory::dims kernel(2), strides(2), dilation{0, 0}, padL{0, 0}, padR{0, 0}, out{dims[0], dims[1], 0, 0};
  dnnl::algorithm algorithm = dnnl::algorithm::pooling_max;
  if (op.kind == OpKind::kAdaptiveAvgPool) {
    for (int d = 0; d < 2; ++d) {
      if (op.outputSize[d] <= 0) Fail(op, "pools to " + std::to_string(op.outputSize[d]) + ": an output size is at least 1");
    }
    if (dims[2] % op.outputSize[0] != 0 || dims[3] % op.outputSize[1] != 0) return PlanUnevenPooling(op, dims);
  }
  for (int d = 0; d < 2; ++d) {
    int64_t size = dims[2 + d];
    if (op.kind == OpKind::kAdaptiveAvgPool) {
      int64_t want = op.outputSize[d];
      kernel[d] = strides[d] = size / want;
      out[2 + d] = want;
      continue;
    }
    int64_t k = op.kernel[d], s = op.stride[d], p = op.padding[d], dil = op.kind == OpKind::kMaxPool ? op.dilation[d] : 1;
    int64_t extent = dil * (k - 1) + 1;
    int64_t o = PooledSize(size, extent, s, p, op.ceilMode);
    if (o <= 0) Fail(op, "its " + DimsText(dims) + " input is smaller than its window");
    kernel[d] = k, strides[d] = s, dilation[d] = dil - 1, padL[d] = p;
    // Floor mode: oneDNN's own division gives PyTorch's size with the same padding on both
    // sides. Ceil mode: the right padding that makes the last window.
    padR[d] = op.ceilMode ? std::max<int64_t>(p, (o - 1) * s + extent - size - p) : p;
    out[2 + d] = o;
    if (op.kind == OpKind::kAvgPool && op.countIncludePad && padR[d] > p) {
      Fail(op, "averages with ceil_mode and count_include_pad over a window past the padding, which PyTorch and oneDNN "
               "count differently");
    }
  }
  if (op.kind != OpKind::kMaxPool) {
    algorithm = op.kind == OpKind::kAvgPool && !op.countIncludePad ? dnnl::algorithm::pooling_avg_exclude_padding
                                                                    : dnnl::algorithm::pooling_avg_include_padding;
  }
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::pooling_forward::primitive_desc pd(engine_, dnnl::prop_kind::forward_inference, algorithm, md,
                                           memory::desc(out, kF32, Tag::any), strides, kernel, dilation, padL, padR, attr);
  std::unordered_map<int, memory> args;
  args[DNNL_ARG_SRC] = Get(op.inputs[0], md).memory;
  Scratchpad(pd.scratchpad_desc(), args);
  int buffer = NewBuffer(Place::kArena, pd.dst_desc().get_size());
  memory result = Bind(pd.dst_desc(), buffer);
  args[DNNL_ARG_DST] = result;
  EmitReading(dnnl::pooling_forward(pd), std::move(args),
              std::string(op.kind == OpKind::kMaxPool ? "max pooling " : "average pooling ") + pd.impl_info_str() + " " +
                  Layout(md) + " -> " + Layout(pd.dst_desc()) + " " + DimsText(out));
  values_[op.output] = {{pd.dst_desc(), result, buffer}};
}

// Adaptive average pooling where the windows differ in size. PyTorch's output i averages inputs
// floor(i * in / out) to ceil((i + 1) * in / out), which no oneDNN pooling window gives, so two
// matmuls with averaging matrices do it: the rows (N*C*H, W) times a W x Ow matrix, then for each
// (n, c) an Oh x H matrix times that (H, Ow) result. Both matrices are small and made once per shape.
void ChainPlan::PlanUnevenPooling(const ChainOp& op, const memory::dims& dims) {
  int64_t planes = dims[0] * dims[1], height = dims[2], width = dims[3];
  int64_t outHeight = op.outputSize[0], outWidth = op.outputSize[1];
  // rows x cols, entry (i, j) 1/|window| where the window of output `j` (or `i`) holds input `i` (or `j`).
  auto averaging = [&](int64_t in, int64_t out, bool inRows) {
    at::Tensor matrix = inRows ? at::zeros({in, out}, at::kFloat) : at::zeros({out, in}, at::kFloat);
    float* data = matrix.data_ptr<float>();
    for (int64_t o = 0; o < out; ++o) {
      int64_t start = o * in / out, end = ((o + 1) * in + out - 1) / out;
      for (int64_t i = start; i < end; ++i) data[inRows ? i * out + o : o * in + i] = 1.f / static_cast<float>(end - start);
    }
    constants_.push_back(matrix);
    return matrix.data_ptr();
  };
  Held plain = Get(op.inputs[0], Plain(dims));
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);

  memory::desc rows = Plain({planes * height, width}), across = Plain({width, outWidth}), mid = Plain({planes * height, outWidth});
  dnnl::matmul::primitive_desc first(engine_, rows, across, mid, attr);
  std::unordered_map<int, memory> args;
  args[DNNL_ARG_SRC] = Bind(rows, plain.buffer);
  args[DNNL_ARG_WEIGHTS] = memory(across, engine_, averaging(width, outWidth, true));
  Scratchpad(first.scratchpad_desc(), args);
  int midBuffer = NewBuffer(Place::kArena, mid.get_size());
  args[DNNL_ARG_DST] = Bind(mid, midBuffer);
  EmitReading(dnnl::matmul(first), std::move(args),
              "adaptive average pooling (widths) matmul " + std::string(first.impl_info_str()) + " " + DimsText(dims) + " -> " +
                  DimsText({dims[0], dims[1], height, outWidth}));

  memory::desc down = Plain({1, outHeight, height}), columns = Plain({planes, height, outWidth}),
               pooled = Plain({planes, outHeight, outWidth});
  dnnl::matmul::primitive_desc second(engine_, down, columns, pooled, attr);
  args.clear();
  args[DNNL_ARG_SRC] = memory(down, engine_, averaging(height, outHeight, false));
  args[DNNL_ARG_WEIGHTS] = Bind(columns, midBuffer);
  Scratchpad(second.scratchpad_desc(), args);
  int buffer = NewBuffer(Place::kArena, pooled.get_size());
  args[DNNL_ARG_DST] = Bind(pooled, buffer);
  pendingReads_.push_back(midBuffer);
  memory::dims out{dims[0], dims[1], outHeight, outWidth};
  EmitReading(dnnl::matmul(second), std::move(args),
              "adaptive average pooling (heights) matmul " + std::string(second.impl_info_str()) + " -> " + DimsText(out));
  memory::desc md = Plain(out);
  values_[op.output] = {{md, Bind(md, buffer), buffer}};
}

void ChainPlan::PlanFlatten(const ChainOp& op) {
  memory::dims dims = values_.at(op.inputs[0])[0].md.get_dims();
  if (dims.size() < 2) Fail(op, "needs a batch of at least 1-D samples, not " + DimsText(dims));
  // Read by linear layers only: they read the unflattened value in the layout it is held in
  // (oneDNN's inner product takes a batch of images and lays its weights out to match), so no
  // reorder to row-major is made. MNIST CNN at batch 64: that reorder was 170 of 6,500 us.
  if (linearOnly_[op.output] && dims.size() >= 3 && dims.size() <= 5) {
    values_[op.output] = {values_.at(op.inputs[0])[0]};
    return;
  }
  // Row-major first (a reorder when the value is blocked); the flat value is the same memory.
  Held plain = Get(op.inputs[0], Plain(dims));
  pendingReads_.clear();
  int64_t features = 1;
  for (size_t d = 1; d < dims.size(); ++d) features *= dims[d];
  memory::desc flat = Plain({dims[0], features});
  values_[op.output] = {{flat, Bind(flat, plain.buffer), plain.buffer}};
}

void ChainPlan::PlaceArena() {
  // First fit: each buffer goes at the lowest offset that no buffer alive at the same time uses.
  std::vector<int> placed;
  size_t total = 0;
  for (size_t b = 0; b < buffers_.size(); ++b) {
    Buffer& buffer = buffers_[b];
    if (buffer.place != Place::kArena) continue;
    buffer.last = std::max(buffer.last, buffer.first);
    size_t bytes = (buffer.bytes + kAlign - 1) / kAlign * kAlign;
    std::vector<std::pair<size_t, size_t>> taken;
    for (int other : placed) {
      const Buffer& p = buffers_[other];
      if (p.last >= buffer.first && p.first <= buffer.last) taken.emplace_back(p.offset, p.offset + (p.bytes + kAlign - 1) / kAlign * kAlign);
    }
    std::sort(taken.begin(), taken.end());
    size_t offset = 0;
    for (const auto& [start, end] : taken) {
      if (offset + bytes <= start) break;
      offset = std::max(offset, end);
    }
    buffer.offset = offset;
    total = std::max(total, offset + bytes);
    placed.push_back(static_cast<int>(b));
  }
  arena_ = at::empty({static_cast<int64_t>(std::max<size_t>(total, 1))}, at::kByte);
  scratch_ = at::empty({static_cast<int64_t>(std::max<size_t>(buffers_[scratchBuffer_].bytes, 1))}, at::kByte);
  auto* arena = static_cast<uint8_t*>(arena_.data_ptr());
  for (auto& [made, index] : bound_) {
    const Buffer& buffer = buffers_[index];
    if (buffer.place == Place::kArena) made.set_data_handle(arena + buffer.offset);
    if (buffer.place == Place::kScratch) made.set_data_handle(scratch_.data_ptr());
    if (buffer.place == Place::kInput) inputBound_.emplace_back(made, buffer.index);
    if (buffer.place == Place::kOutput) outputBound_.emplace_back(made, buffer.index);
  }
  arenaBytes_ = total;
  for (Step& step : steps_) {
    for (const auto& [argument, made] : step.args) step.cArgs.push_back({argument, made.get()});
  }
}

void ChainPlan::Execute(Step& step, dnnl::stream& stream) {
  dnnl_status_t status =
      dnnl_primitive_execute(step.primitive.get(), stream.get(), static_cast<int>(step.cArgs.size()), step.cArgs.data());
  if (status != dnnl_success) {
    throw std::runtime_error("oneDNN chain: " + step.description + " failed (oneDNN status " + std::to_string(status) + ")");
  }
}

std::vector<at::Tensor> ChainPlan::Run(const std::vector<at::Tensor>& inputs, dnnl::stream& stream, bool timed) {
  std::vector<at::Tensor> outputs;
  outputs.reserve(outputDims_.size());
  for (const auto& dims : outputDims_) outputs.push_back(at::empty(dims, at::kFloat));
  for (auto& [made, index] : inputBound_) made.set_data_handle(inputs[index].data_ptr());
  for (auto& [made, index] : outputBound_) made.set_data_handle(outputs[index].data_ptr());
  if (!timed) {
    for (Step& step : steps_) Execute(step, stream);
    stream.wait();
    return outputs;
  }
  for (Step& step : steps_) {
    auto start = std::chrono::steady_clock::now();
    Execute(step, stream);
    stream.wait();
    step.nanoseconds += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
    ++step.runs;
  }
  return outputs;
}

std::vector<ChainPlan::StepReport> ChainPlan::Steps() const {
  std::vector<StepReport> reports;
  for (const Step& step : steps_) reports.push_back({step.description, step.runs, step.nanoseconds});
  return reports;
}

void ChainPlan::ResetTimes() {
  for (Step& step : steps_) step.runs = step.nanoseconds = 0;
}

}  // namespace tee::onednn
