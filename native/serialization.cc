#include "serialization.h"

#include <torch/csrc/jit/serialization/pickle.h>

#include <vector>

#include "errors.h"
#include "values.h"

namespace tee {

Napi::Value PickleSave(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  c10::IValue value = ToIValue(info[0], c10::AnyType::get(), "value");
  std::vector<char> bytes = torch::jit::pickle_save(value);
  return Napi::Buffer<char>::Copy(env, bytes.data(), bytes.size());
}

Napi::Value PickleLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBuffer()) ThrowTypeError(env, "pickleLoad needs a Buffer");
  Napi::Buffer<char> buffer = info[0].As<Napi::Buffer<char>>();
  std::vector<char> bytes(buffer.Data(), buffer.Data() + buffer.Length());
  return FromIValue(env, torch::jit::pickle_load(bytes));
}

}  // namespace tee
