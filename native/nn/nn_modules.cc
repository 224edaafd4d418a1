#include "nn/nn_modules.h"

#include <string>
#include <vector>

#include "tensor/dtypes.h"
#include "node/instance_data.h"
#include "tensor/tensor.h"

namespace tee {
namespace {

// LibTorch's Sequential has a templated forward, which AnyModule cannot hold.
class BranchSequentialImpl : public torch::nn::SequentialImpl {
 public:
  // PyTorch's empty Sequential returns its input; LibTorch's throws.
  at::Tensor forward(at::Tensor input) {
    if (is_empty()) return input;
    return torch::nn::SequentialImpl::forward(std::move(input));
  }
};
TORCH_MODULE(BranchSequential);

// x.select(dim, index), as torch.select: a head on one token ([CLS]) of a sequence.
class SelectImpl : public torch::nn::Cloneable<SelectImpl> {
 public:
  SelectImpl(int64_t dim, int64_t index) : dim_(dim), index_(index) {}
  void reset() override {}
  at::Tensor forward(const at::Tensor& input) { return input.select(dim_, index_); }
  void pretty_print(std::ostream& stream) const override { stream << "Select(dim=" << dim_ << ", index=" << index_ << ")"; }

 private:
  int64_t dim_;
  int64_t index_;
};
TORCH_MODULE(Select);

class Options {
 public:
  explicit Options(Napi::Object object) : object_(object) {}

  int64_t Int(const char* name) const { return static_cast<int64_t>(Number(name)); }
  double Number(const char* name) const {
    Napi::Value value = Require(name);
    if (!value.IsNumber()) ThrowTypeError(object_.Env(), std::string(name) + " must be a number");
    return value.As<Napi::Number>().DoubleValue();
  }
  bool Bool(const char* name) const { return Require(name).ToBoolean(); }
  std::string String(const char* name) const { return Require(name).ToString(); }
  bool IsNull(const char* name) const { return Require(name).IsNull(); }
  std::vector<int64_t> Ints(const char* name) const {
    Napi::Value value = Require(name);
    if (!value.IsArray()) ThrowTypeError(object_.Env(), std::string(name) + " must be an array of integers");
    Napi::Array array = value.As<Napi::Array>();
    std::vector<int64_t> ints;
    for (uint32_t i = 0; i < array.Length(); ++i) ints.push_back(array.Get(i).As<Napi::Number>().Int64Value());
    return ints;
  }
  template <size_t N>
  torch::ExpandingArray<N> Pair(const char* name) const {
    std::vector<int64_t> ints = Ints(name);
    if (ints.size() != N) ThrowTypeError(object_.Env(), std::string(name) + " must have " + std::to_string(N) + " values");
    return torch::ExpandingArray<N>(ints);
  }

 private:
  Napi::Value Require(const char* name) const {
    if (!object_.Has(name)) ThrowTypeError(object_.Env(), std::string("missing module option ") + name);
    return object_.Get(name);
  }
  Napi::Object object_;
};

torch::nn::AnyModule Build(Napi::Env env, const std::string& kind, const Options& o, const Napi::Array& children) {
  namespace nn = torch::nn;
  if (kind == "Linear") {
    return nn::AnyModule(nn::Linear(nn::LinearOptions(o.Int("inFeatures"), o.Int("outFeatures")).bias(o.Bool("bias"))));
  }
  if (kind == "Conv2d") {
    auto options = nn::Conv2dOptions(o.Int("inChannels"), o.Int("outChannels"), o.Pair<2>("kernelSize"))
                       .stride(o.Pair<2>("stride"))
                       .padding(o.Pair<2>("padding"))
                       .dilation(o.Pair<2>("dilation"))
                       .groups(o.Int("groups"))
                       .bias(o.Bool("bias"));
    std::string mode = o.String("paddingMode");
    if (mode == "zeros") options.padding_mode(torch::kZeros);
    else if (mode == "reflect") options.padding_mode(torch::kReflect);
    else if (mode == "replicate") options.padding_mode(torch::kReplicate);
    else if (mode == "circular") options.padding_mode(torch::kCircular);
    else ThrowTypeError(env, "paddingMode must be 'zeros', 'reflect', 'replicate' or 'circular'");
    return nn::AnyModule(nn::Conv2d(options));
  }
  if (kind == "BatchNorm1d" || kind == "BatchNorm2d") {
    auto options = nn::BatchNormOptions(o.Int("numFeatures"))
                       .eps(o.Number("eps"))
                       .affine(o.Bool("affine"))
                       .track_running_stats(o.Bool("trackRunningStats"));
    if (o.IsNull("momentum")) options.momentum(c10::nullopt);
    else options.momentum(o.Number("momentum"));
    if (kind == "BatchNorm1d") return nn::AnyModule(nn::BatchNorm1d(options));
    return nn::AnyModule(nn::BatchNorm2d(options));
  }
  if (kind == "ReLU") return nn::AnyModule(nn::ReLU(nn::ReLUOptions(o.Bool("inplace"))));
  if (kind == "AvgPool2d") {
    auto options = nn::AvgPool2dOptions(o.Pair<2>("kernelSize"))
                       .stride(o.Pair<2>("stride"))
                       .padding(o.Pair<2>("padding"))
                       .ceil_mode(o.Bool("ceilMode"))
                       .count_include_pad(o.Bool("countIncludePad"));
    if (!o.IsNull("divisorOverride")) options.divisor_override(o.Int("divisorOverride"));
    return nn::AnyModule(nn::AvgPool2d(options));
  }
  if (kind == "MaxPool2d") {
    return nn::AnyModule(nn::MaxPool2d(nn::MaxPool2dOptions(o.Pair<2>("kernelSize"))
                                           .stride(o.Pair<2>("stride"))
                                           .padding(o.Pair<2>("padding"))
                                           .dilation(o.Pair<2>("dilation"))
                                           .ceil_mode(o.Bool("ceilMode"))));
  }
  if (kind == "AdaptiveAvgPool2d") {
    std::vector<int64_t> size = o.Ints("outputSize");
    if (size.size() != 2) ThrowTypeError(env, "outputSize must have 2 values");
    return nn::AnyModule(nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({size[0], size[1]})));
  }
  if (kind == "Flatten") {
    return nn::AnyModule(nn::Flatten(nn::FlattenOptions().start_dim(o.Int("startDim")).end_dim(o.Int("endDim"))));
  }
  if (kind == "Dropout") return nn::AnyModule(nn::Dropout(nn::DropoutOptions(o.Number("p")).inplace(o.Bool("inplace"))));
  if (kind == "Identity") return nn::AnyModule(nn::Identity());
  if (kind == "Tanh") return nn::AnyModule(nn::Tanh());
  if (kind == "GELU") return nn::AnyModule(nn::GELU(nn::GELUOptions().approximate(o.String("approximate"))));
  if (kind == "LayerNorm") {
    return nn::AnyModule(
        nn::LayerNorm(nn::LayerNormOptions(o.Ints("normalizedShape")).eps(o.Number("eps")).elementwise_affine(o.Bool("elementwiseAffine"))));
  }
  if (kind == "Embedding") {
    auto options = nn::EmbeddingOptions(o.Int("numEmbeddings"), o.Int("embeddingDim"));
    if (!o.IsNull("paddingIdx")) options.padding_idx(o.Int("paddingIdx"));
    return nn::AnyModule(nn::Embedding(options));
  }
  if (kind == "Select") return nn::AnyModule(Select(o.Int("dim"), o.Int("index")));
  if (kind == "Sequential") {
    BranchSequential sequential;
    for (uint32_t i = 0; i < children.Length(); ++i) {
      sequential->push_back(std::to_string(i), NnModule::UnwrapModule(children.Get(i))->Get(env));
    }
    return nn::AnyModule(sequential);
  }
  ThrowTypeError(env, "unknown module kind '" + kind + "'");
}

Napi::Array NamedTensors(Napi::Env env, const torch::OrderedDict<std::string, at::Tensor>& tensors) {
  Napi::Array array = Napi::Array::New(env, tensors.size());
  uint32_t i = 0;
  for (const auto& item : tensors) {
    Napi::Array pair = Napi::Array::New(env, 2);
    pair.Set(0u, Napi::String::New(env, item.key()));
    pair.Set(1u, Tensor::Wrap(env, item.value()));
    array.Set(i++, pair);
  }
  return array;
}

}  // namespace

Napi::Function NnModule::Define(Napi::Env env) {
  return DefineClass(env, "NativeNnModule",
                     {
                         TEE_METHOD(NnModule, "forward", Forward),
                         TEE_METHOD(NnModule, "namedParameters", NamedParameters),
                         TEE_METHOD(NnModule, "namedBuffers", NamedBuffers),
                         TEE_METHOD(NnModule, "namedChildren", NamedChildren),
                         TEE_METHOD(NnModule, "train", Train),
                         TEE_METHOD(NnModule, "isTraining", IsTraining),
                         TEE_METHOD(NnModule, "to", To),
                         TEE_METHOD(NnModule, "typeName", TypeName),
                         TEE_METHOD(NnModule, "dispose", Dispose),
                         TEE_METHOD(NnModule, "isDisposed", IsDisposed),
                     });
}

bool NnModule::IsNnModule(Napi::Env env, const Napi::Value& value) {
  return value.IsObject() &&
         value.As<Napi::Object>().InstanceOf(GetInstanceData(env).nnModuleConstructor.Value());
}

NnModule* NnModule::UnwrapModule(const Napi::Value& value) {
  if (!IsNnModule(value.Env(), value)) ThrowTypeError(value.Env(), "expected an nn module");
  return Unwrap(value.As<Napi::Object>());
}

NnModule::NnModule(const Napi::CallbackInfo& info) : GuardedWrap<NnModule>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) {
    ThrowTypeError(info.Env(), "NativeNnModule cannot be constructed directly; use the nn classes");
  }
  module_ = *info[0].As<Napi::External<torch::nn::AnyModule>>().Data();
}

torch::nn::AnyModule& NnModule::Get(Napi::Env env) {
  if (disposed_) ThrowError(env, "module was disposed: it cannot be used after dispose()");
  return module_;
}

Napi::Value NnModule::Forward(const Napi::CallbackInfo& info) {
  return Tensor::Wrap(info.Env(), Get(info.Env()).forward<at::Tensor>(Tensor::FromJs(info[0], "input")));
}

Napi::Value NnModule::NamedParameters(const Napi::CallbackInfo& info) {
  return NamedTensors(info.Env(), Get(info.Env()).ptr()->named_parameters(info[0].ToBoolean()));
}

Napi::Value NnModule::NamedBuffers(const Napi::CallbackInfo& info) {
  return NamedTensors(info.Env(), Get(info.Env()).ptr()->named_buffers(info[0].ToBoolean()));
}

Napi::Value NnModule::NamedChildren(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto sequential = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(Get(env).ptr());
  Napi::Array array = Napi::Array::New(env);
  if (!sequential) return array;
  uint32_t i = 0;
  for (const auto& child : *sequential) {
    torch::nn::AnyModule copy = child;
    Napi::Array pair = Napi::Array::New(env, 2);
    pair.Set(0u, Napi::String::New(env, std::to_string(i)));
    pair.Set(1u, GetInstanceData(env).nnModuleConstructor.New({Napi::External<torch::nn::AnyModule>::New(env, &copy)}));
    array.Set(i++, pair);
  }
  return array;
}

Napi::Value NnModule::Train(const Napi::CallbackInfo& info) {
  Get(info.Env()).ptr()->train(info[0].ToBoolean());
  return info.Env().Undefined();
}

Napi::Value NnModule::IsTraining(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), Get(info.Env()).ptr()->is_training());
}

Napi::Value NnModule::To(const Napi::CallbackInfo& info) {
  Get(info.Env()).ptr()->to(ParseDevice(info[0].ToString()));
  return info.Env().Undefined();
}

Napi::Value NnModule::TypeName(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), Get(info.Env()).ptr()->name());
}

Napi::Value NnModule::Dispose(const Napi::CallbackInfo& info) {
  module_ = torch::nn::AnyModule();
  disposed_ = true;
  return info.Env().Undefined();
}

Napi::Value NnModule::IsDisposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed_); }

Napi::Value CreateNnModule(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, "nn", [&]() -> Napi::Value {
    std::string kind = info[0].As<Napi::String>();
    Options options(info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env));
    Napi::Array children = info[2].IsArray() ? info[2].As<Napi::Array>() : Napi::Array::New(env);
    torch::nn::AnyModule module = Build(env, kind, options, children);
    return GetInstanceData(env).nnModuleConstructor.New({Napi::External<torch::nn::AnyModule>::New(env, &module)});
  });
}

}  // namespace tee
