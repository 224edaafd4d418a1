#include "tensor/serialization.h"

#include <torch/csrc/jit/serialization/pickle.h>

#include <vector>

#include "node/errors.h"
#include "node/values.h"

namespace tee {

Napi::Value PickleSave(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  c10::IValue value = ToIValue(info[0], c10::AnyType::get(), "value");
  std::vector<char> bytes = torch::jit::pickle_save(value);
  return Napi::Buffer<char>::Copy(env, bytes.data(), bytes.size());
}

}  // namespace tee
