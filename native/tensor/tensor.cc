#include "tensor/tensor.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "tensor/dtypes.h"
#include "node/instance_data.h"

namespace tee {
namespace {

int64_t ReportedSize(const at::Tensor& tensor) {
  return tensor.defined() && tensor.is_cpu() ? static_cast<int64_t>(tensor.nbytes()) : 0;
}

std::vector<int64_t> ReadShape(const Napi::Value& value) {
  if (!value.IsArray()) ThrowTypeError(value.Env(), "shape must be an array of non-negative integers");
  Napi::Array array = value.As<Napi::Array>();
  std::vector<int64_t> shape;
  for (uint32_t i = 0; i < array.Length(); ++i) {
    Napi::Value dim = array.Get(i);
    double size = dim.IsNumber() ? dim.As<Napi::Number>().DoubleValue() : -1;
    if (size < 0 || size != static_cast<int64_t>(size)) {
      ThrowTypeError(value.Env(), "shape must be an array of non-negative integers");
    }
    shape.push_back(static_cast<int64_t>(size));
  }
  return shape;
}

c10::ScalarType ElementType(napi_typedarray_type type, Napi::Env env) {
  switch (type) {
    case napi_float32_array: return c10::kFloat;
    case napi_float64_array: return c10::kDouble;
    case napi_int32_array: return c10::kInt;
    case napi_bigint64_array: return c10::kLong;
    case napi_uint8_array: return c10::kByte;
    case napi_int8_array: return c10::kChar;
    case napi_int16_array: return c10::kShort;
    default: ThrowTypeError(env, "unsupported TypedArray type for a tensor");
  }
}

Napi::Value CopyToTypedArray(Napi::Env env, const at::Tensor& source) {
  at::Tensor tensor = source.detach().to(c10::kCPU);
  napi_typedarray_type arrayType;
  switch (tensor.scalar_type()) {
    case c10::kFloat: arrayType = napi_float32_array; break;
    case c10::kDouble: arrayType = napi_float64_array; break;
    case c10::kHalf:
    case c10::kBFloat16: tensor = tensor.to(c10::kFloat); arrayType = napi_float32_array; break;
    case c10::kInt: arrayType = napi_int32_array; break;
    case c10::kLong: arrayType = napi_bigint64_array; break;
    case c10::kShort: arrayType = napi_int16_array; break;
    case c10::kChar: arrayType = napi_int8_array; break;
    case c10::kByte:
    case c10::kBool: arrayType = napi_uint8_array; break;
    default: ThrowTypeError(env, "cannot copy a tensor of dtype " + DtypeName(tensor.scalar_type()));
  }
  tensor = tensor.contiguous();
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, tensor.nbytes());
  if (tensor.nbytes() > 0) std::memcpy(buffer.Data(), tensor.data_ptr(), tensor.nbytes());
  napi_value array;
  NAPI_THROW_IF_FAILED(env, napi_create_typedarray(env, arrayType, tensor.numel(), buffer, 0, &array),
                       Napi::Value());
  return Napi::Value(env, array);
}

}  // namespace

Napi::Function Tensor::Define(Napi::Env env) {
  return DefineClass(env, "NativeTensor",
                     {
                         TEE_METHOD(Tensor, "shape", Shape),
                         TEE_METHOD(Tensor, "dtype", Dtype),
                         TEE_METHOD(Tensor, "device", Device),
                         TEE_METHOD(Tensor, "requiresGrad", RequiresGrad),
                         TEE_METHOD(Tensor, "setRequiresGrad", SetRequiresGrad),
                         TEE_METHOD(Tensor, "grad", Grad),
                         TEE_METHOD(Tensor, "setGrad", SetGrad),
                         TEE_METHOD(Tensor, "isLeaf", IsLeaf),
                         TEE_METHOD(Tensor, "data", Data),
                         TEE_METHOD(Tensor, "bytes", Bytes),
                         TEE_METHOD(Tensor, "item", Item),
                         TEE_METHOD(Tensor, "backward", Backward),
                         TEE_METHOD(Tensor, "dispose", Dispose),
                         TEE_METHOD(Tensor, "isDisposed", IsDisposed),
                         TEE_METHOD(Tensor, "sameAs", SameAs),
                         TEE_METHOD(Tensor, "reportMemory", ReportMemory),
                     });
}

Tensor::Tensor(const Napi::CallbackInfo& info) : GuardedWrap<Tensor>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) {
    ThrowTypeError(info.Env(), "NativeTensor cannot be constructed directly; use the torch functions");
  }
  tensor_ = *info[0].As<Napi::External<at::Tensor>>().Data();
  ReportOrDefer(info.Env(), ReportedSize(tensor_));
}

// Not Napi::MemoryManagement, which throws on failure: a destructor must not throw, and
// during an environment's teardown there is nothing to tell V8 anyway.
Tensor::~Tensor() {
  int64_t ignored;
  if (reportedBytes_ > 0) napi_adjust_external_memory(Env(), -reportedBytes_, &ignored);
}

void Tensor::Report(Napi::Env env, int64_t bytes) {
  if (bytes == reportedBytes_) return;
  int64_t ignored;
  napi_adjust_external_memory(env, bytes - reportedBytes_, &ignored);
  reportedBytes_ = bytes;
}

// V8 answers a large report with a full garbage collection soon after (about 2 ms a
// training step, for outputs that torch.tidy disposes anyway): inside a tidy scope the
// bytes wait until the tensor escapes it (ReportMemory), and are never reported if it does not.
void Tensor::ReportOrDefer(Napi::Env env, int64_t bytes) {
  if (GetInstanceData(env).memoryReportsDeferred) {
    deferredBytes_ = std::max(deferredBytes_, bytes);
  } else if (bytes > reportedBytes_) {
    Report(env, bytes);
  }
}

void Tensor::ReportRetained(const Napi::Value& value, int64_t bytes) {
  if (!IsTensor(value.Env(), value)) return;
  Tensor* tensor = ObjectWrap<Tensor>::Unwrap(value.As<Napi::Object>());
  if (!tensor->disposed_) tensor->ReportOrDefer(value.Env(), bytes);
}

Napi::Value Tensor::SetMemoryReportsDeferred(const Napi::CallbackInfo& info) {
  GetInstanceData(info.Env()).memoryReportsDeferred = info[0].ToBoolean();
  return info.Env().Undefined();
}

Napi::Value Tensor::ReportMemory(const Napi::CallbackInfo& info) {
  if (!disposed_ && deferredBytes_ > reportedBytes_) Report(info.Env(), deferredBytes_);
  deferredBytes_ = 0;
  return info.Env().Undefined();
}

Napi::Value Tensor::Wrap(Napi::Env env, at::Tensor tensor) {
  if (!tensor.defined()) return env.Null();
  return GetInstanceData(env).tensorConstructor.New({Napi::External<at::Tensor>::New(env, &tensor)});
}

bool Tensor::IsTensor(Napi::Env env, const Napi::Value& value) {
  return value.IsObject() &&
         value.As<Napi::Object>().InstanceOf(GetInstanceData(env).tensorConstructor.Value());
}

const at::Tensor& Tensor::FromJs(const Napi::Value& value, const char* what) {
  Napi::Env env = value.Env();
  if (!IsTensor(env, value)) ThrowTypeError(env, std::string(what) + " must be a Tensor");
  return ObjectWrap<Tensor>::Unwrap(value.As<Napi::Object>())->Get(env);
}

const at::Tensor& Tensor::Get(Napi::Env env) const {
  if (disposed_) ThrowError(env, "Tensor was disposed: it cannot be used after dispose()");
  return tensor_;
}

void Tensor::Reset(Napi::Env env) {
  tensor_ = at::Tensor();
  disposed_ = true;
  Report(env, 0);
}

Napi::Value Tensor::Shape(const Napi::CallbackInfo& info) {
  auto sizes = Get(info.Env()).sizes();
  Napi::Array shape = Napi::Array::New(info.Env(), sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) shape.Set(i, Napi::Number::New(info.Env(), sizes[i]));
  return shape;
}

Napi::Value Tensor::Dtype(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), DtypeName(Get(info.Env()).scalar_type()));
}

Napi::Value Tensor::Device(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), DeviceName(Get(info.Env()).device()));
}

Napi::Value Tensor::RequiresGrad(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), Get(info.Env()).requires_grad());
}

Napi::Value Tensor::SetRequiresGrad(const Napi::CallbackInfo& info) {
  const_cast<at::Tensor&>(Get(info.Env())).set_requires_grad(info[0].ToBoolean());
  return info.Env().Undefined();
}

Napi::Value Tensor::Grad(const Napi::CallbackInfo& info) {
  return Wrap(info.Env(), Get(info.Env()).grad());
}

Napi::Value Tensor::SetGrad(const Napi::CallbackInfo& info) {
  at::Tensor grad = info[0].IsNull() || info[0].IsUndefined() ? at::Tensor() : FromJs(info[0], "grad");
  const_cast<at::Tensor&>(Get(info.Env())).mutable_grad() = grad;
  return info.Env().Undefined();
}

Napi::Value Tensor::IsLeaf(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), Get(info.Env()).is_leaf());
}

Napi::Value Tensor::Data(const Napi::CallbackInfo& info) { return CopyToTypedArray(info.Env(), Get(info.Env())); }

// The elements' raw bytes in row-major order and the tensor's own dtype (half and bfloat16
// included), as torch.save stores a storage.
Napi::Value Tensor::Bytes(const Napi::CallbackInfo& info) {
  at::Tensor tensor = Get(info.Env()).detach().to(c10::kCPU).contiguous();
  return Napi::Buffer<char>::Copy(info.Env(), static_cast<const char*>(tensor.data_ptr()), tensor.nbytes());
}

Napi::Value Tensor::Item(const Napi::CallbackInfo& info) {
  c10::Scalar value = Get(info.Env()).item();
  if (value.isBoolean()) return Napi::Boolean::New(info.Env(), value.toBool());
  if (value.isIntegral(false)) return Napi::Number::New(info.Env(), static_cast<double>(value.toLong()));
  return Napi::Number::New(info.Env(), value.toDouble());
}

Napi::Value Tensor::Backward(const Napi::CallbackInfo& info) {
  at::Tensor gradient;
  if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull()) gradient = FromJs(info[0], "gradient");
  bool retainGraph = info.Length() > 1 && info[1].ToBoolean();
  Get(info.Env()).backward(gradient, retainGraph);
  return info.Env().Undefined();
}

Napi::Value Tensor::Dispose(const Napi::CallbackInfo& info) {
  if (!disposed_) Reset(info.Env());
  return info.Env().Undefined();
}

Napi::Value Tensor::IsDisposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed_); }

Napi::Value Tensor::SameAs(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), Get(info.Env()).is_same(FromJs(info[0])));
}

Napi::Value TensorFromTypedArray(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray()) ThrowTypeError(env, "data must be a TypedArray");
  Napi::TypedArray array = info[0].As<Napi::TypedArray>();
  std::vector<int64_t> shape = ReadShape(info[1]);
  int64_t numel = 1;
  for (int64_t size : shape) numel *= size;
  if (numel != static_cast<int64_t>(array.ElementLength())) {
    ThrowError(env, "shape [" + c10::Join(", ", shape) + "] needs " + std::to_string(numel) + " values but " +
                        std::to_string(array.ElementLength()) + " were given");
  }
  c10::ScalarType source = ElementType(array.TypedArrayType(), env);
  c10::ScalarType target = info[2].IsString() ? ParseDtype(info[2].As<Napi::String>()) : source;
  auto* bytes = static_cast<uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  at::Tensor tensor = at::empty(shape, at::TensorOptions().dtype(source));
  if (array.ByteLength() > 0) std::memcpy(tensor.data_ptr(), bytes, array.ByteLength());
  return Tensor::Wrap(env, target == source ? tensor : tensor.to(target));
}

Napi::Value TensorFromBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBuffer() || !info[1].IsString()) ThrowTypeError(env, "fromBytes(bytes: Buffer, dtype: string)");
  Napi::Buffer<char> bytes = info[0].As<Napi::Buffer<char>>();
  c10::ScalarType dtype = ParseDtype(info[1].As<Napi::String>());
  size_t element = c10::elementSize(dtype);
  if (bytes.Length() % element != 0) {
    ThrowError(env, std::to_string(bytes.Length()) + " bytes are not a whole number of " + DtypeName(dtype) + " elements");
  }
  at::Tensor tensor = at::empty({static_cast<int64_t>(bytes.Length() / element)}, at::TensorOptions().dtype(dtype));
  if (bytes.Length() > 0) std::memcpy(tensor.data_ptr(), bytes.Data(), bytes.Length());
  return Tensor::Wrap(env, tensor);
}

}  // namespace tee
