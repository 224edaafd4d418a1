#include "node/values.h"

#include <cmath>
#include <string>

#include "tensor/dtypes.h"
#include "node/errors.h"
#include "tensor/tensor.h"

namespace tee {
namespace {

[[noreturn]] void Mismatch(const Napi::Value& value, const c10::TypePtr& type, const std::string& what) {
  ThrowTypeError(value.Env(), what + " must be " + type->annotation_str() + ", got " +
                                  value.ToString().Utf8Value().substr(0, 80));
}

bool IsInteger(const Napi::Value& value) {
  if (!value.IsNumber()) return false;
  double number = value.As<Napi::Number>().DoubleValue();
  return std::isfinite(number) && std::trunc(number) == number;
}

int64_t ToInt(const Napi::Value& value, const c10::TypePtr& type, const std::string& what) {
  if (IsInteger(value)) return static_cast<int64_t>(value.As<Napi::Number>().DoubleValue());
  if (value.IsBigInt()) {
    bool lossless = true;
    return value.As<Napi::BigInt>().Int64Value(&lossless);
  }
  Mismatch(value, type, what);
}

// What a value with no declared type (Any) most likely means.
c10::TypePtr InferType(const Napi::Value& value) {
  Napi::Env env = value.Env();
  if (Tensor::IsTensor(env, value)) return c10::TensorType::get();
  if (value.IsBoolean()) return c10::BoolType::get();
  if (IsInteger(value) || value.IsBigInt()) return c10::IntType::get();
  if (value.IsNumber()) return c10::FloatType::get();
  if (value.IsString()) return c10::StringType::get();
  if (value.IsNull() || value.IsUndefined()) return c10::NoneType::get();
  if (value.IsArray()) {
    Napi::Array array = value.As<Napi::Array>();
    std::vector<c10::TypePtr> elements;
    for (uint32_t i = 0; i < array.Length(); ++i) elements.push_back(InferType(array.Get(i)));
    bool same = !elements.empty();
    for (const auto& element : elements) same = same && *element == *elements[0];
    if (same) return c10::ListType::create(elements[0]);
    return c10::TupleType::create(elements);
  }
  if (value.IsObject()) {
    Napi::Object object = value.As<Napi::Object>();
    Napi::Array keys = object.GetPropertyNames();
    c10::TypePtr valueType = keys.Length() > 0 ? InferType(object.Get(keys.Get(0u))) : c10::TensorType::get();
    for (uint32_t i = 1; i < keys.Length(); ++i) {
      if (!(*InferType(object.Get(keys.Get(i))) == *valueType)) valueType = c10::AnyType::get();
    }
    return c10::DictType::create(c10::StringType::get(), valueType);
  }
  ThrowTypeError(env, "cannot pass " + value.ToString().Utf8Value() + " to TorchScript");
}

c10::IValue ToList(const Napi::Value& value, const c10::ListTypePtr& type, const std::string& what) {
  if (!value.IsArray()) Mismatch(value, type, what);
  Napi::Array array = value.As<Napi::Array>();
  const c10::TypePtr& element = type->getElementType();
  c10::impl::GenericList list(element);
  list.reserve(array.Length());
  for (uint32_t i = 0; i < array.Length(); ++i) {
    list.push_back(ToIValue(array.Get(i), element, what + "[" + std::to_string(i) + "]"));
  }
  return list;
}

c10::IValue ToTuple(const Napi::Value& value, const c10::TupleTypePtr& type, const std::string& what) {
  if (!value.IsArray()) Mismatch(value, type, what);
  Napi::Array array = value.As<Napi::Array>();
  auto elements = type->elements();
  if (array.Length() != elements.size()) {
    ThrowTypeError(value.Env(), what + " must be a tuple of " + std::to_string(elements.size()) +
                                    " elements, got " + std::to_string(array.Length()));
  }
  std::vector<c10::IValue> items;
  for (uint32_t i = 0; i < array.Length(); ++i) {
    items.push_back(ToIValue(array.Get(i), elements[i], what + "[" + std::to_string(i) + "]"));
  }
  return c10::ivalue::Tuple::create(std::move(items));
}

c10::IValue ToDict(const Napi::Value& value, const c10::DictTypePtr& type, const std::string& what) {
  if (!value.IsObject() || value.IsArray()) Mismatch(value, type, what);
  Napi::Object object = value.As<Napi::Object>();
  Napi::Array keys = object.GetPropertyNames();
  c10::impl::GenericDict dict(type->getKeyType(), type->getValueType());
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    Napi::Value key = keys.Get(i);
    std::string name = key.ToString();
    c10::IValue keyValue = type->getKeyType()->kind() == c10::TypeKind::IntType
                               ? c10::IValue(static_cast<int64_t>(std::stoll(name)))
                               : c10::IValue(name);
    dict.insert(keyValue, ToIValue(object.Get(key), type->getValueType(), what + "." + name));
  }
  return dict;
}

}  // namespace

c10::IValue ToIValue(const Napi::Value& value, const c10::TypePtr& type, const std::string& what) {
  Napi::Env env = value.Env();
  switch (type->kind()) {
    case c10::TypeKind::AnyType:
      return ToIValue(value, InferType(value), what);
    case c10::TypeKind::OptionalType:
      if (value.IsNull() || value.IsUndefined()) return c10::IValue();
      return ToIValue(value, type->expectRef<c10::OptionalType>().getElementType(), what);
    case c10::TypeKind::NoneType:
      if (value.IsNull() || value.IsUndefined()) return c10::IValue();
      Mismatch(value, type, what);
    case c10::TypeKind::TensorType:
      if (!Tensor::IsTensor(env, value)) Mismatch(value, type, what);
      return Tensor::FromJs(value, what.c_str());
    case c10::TypeKind::ScalarTypeType:
      if (value.IsString()) return static_cast<int64_t>(ParseDtype(value.As<Napi::String>()));
      return ToInt(value, type, what);
    case c10::TypeKind::IntType:
    case c10::TypeKind::LayoutType:
    case c10::TypeKind::MemoryFormatType:
      return ToInt(value, type, what);
    case c10::TypeKind::FloatType:
      if (!value.IsNumber()) Mismatch(value, type, what);
      return value.As<Napi::Number>().DoubleValue();
    case c10::TypeKind::NumberType:
      if (value.IsBoolean()) return c10::Scalar(value.As<Napi::Boolean>().Value());
      if (IsInteger(value) || value.IsBigInt()) return c10::Scalar(ToInt(value, type, what));
      if (!value.IsNumber()) Mismatch(value, type, what);
      return c10::Scalar(value.As<Napi::Number>().DoubleValue());
    case c10::TypeKind::BoolType:
      if (!value.IsBoolean()) Mismatch(value, type, what);
      return value.As<Napi::Boolean>().Value();
    case c10::TypeKind::StringType:
      if (!value.IsString()) Mismatch(value, type, what);
      return value.As<Napi::String>().Utf8Value();
    case c10::TypeKind::DeviceObjType:
      if (!value.IsString()) Mismatch(value, type, what);
      return ParseDevice(value.As<Napi::String>());
    case c10::TypeKind::ListType:
      return ToList(value, type->expect<c10::ListType>(), what);
    case c10::TypeKind::TupleType:
      return ToTuple(value, type->expect<c10::TupleType>(), what);
    case c10::TypeKind::DictType:
      return ToDict(value, type->expect<c10::DictType>(), what);
    default:
      ThrowTypeError(env, what + ": values of type " + type->annotation_str() + " cannot be passed from JS");
  }
}

Napi::Value FromIValue(Napi::Env env, const c10::IValue& value) {
  if (value.isTensor()) return Tensor::Wrap(env, value.toTensor());
  if (value.isNone()) return env.Null();
  if (value.isBool()) return Napi::Boolean::New(env, value.toBool());
  if (value.isInt()) return Napi::Number::New(env, static_cast<double>(value.toInt()));
  if (value.isDouble()) return Napi::Number::New(env, value.toDouble());
  if (value.isString()) return Napi::String::New(env, value.toStringRef());
  if (value.isDevice()) return Napi::String::New(env, value.toDevice().str());
  if (value.isList() || value.isTuple()) {
    c10::ArrayRef<c10::IValue> items =
        value.isTuple() ? value.toTupleRef().elements() : c10::ArrayRef<c10::IValue>(value.toListRef());
    Napi::Array array = Napi::Array::New(env, items.size());
    for (size_t i = 0; i < items.size(); ++i) array.Set(i, FromIValue(env, items[i]));
    return array;
  }
  if (value.isGenericDict()) {
    Napi::Object object = Napi::Object::New(env);
    for (const auto& entry : value.toGenericDict()) {
      const c10::IValue& key = entry.key();
      std::string name = key.isString() ? key.toStringRef() : key.isInt() ? std::to_string(key.toInt()) : "";
      if (name.empty() && !key.isString()) ThrowTypeError(env, "dict keys must be strings or ints to reach JS");
      object.Set(name, FromIValue(env, entry.value()));
    }
    return object;
  }
  ThrowTypeError(env, "a TorchScript value of type " + value.tagKind() + " cannot be returned to JS");
}

}  // namespace tee
