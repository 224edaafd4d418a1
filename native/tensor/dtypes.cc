#include "tensor/dtypes.h"

#include <stdexcept>
#include <utility>

namespace tee {
namespace {

const std::pair<const char*, c10::ScalarType> kDtypes[] = {
    {"float32", c10::kFloat}, {"float64", c10::kDouble}, {"float16", c10::kHalf},
    {"bfloat16", c10::kBFloat16}, {"int32", c10::kInt}, {"int64", c10::kLong},
    {"int16", c10::kShort}, {"int8", c10::kChar}, {"uint8", c10::kByte}, {"bool", c10::kBool},
};

}  // namespace

c10::ScalarType ParseDtype(const std::string& name) {
  for (const auto& [jsName, type] : kDtypes) {
    if (name == jsName) return type;
  }
  std::string known;
  for (const auto& entry : kDtypes) known += std::string(known.empty() ? "" : ", ") + entry.first;
  throw std::invalid_argument("unknown dtype '" + name + "' (expected one of " + known + ")");
}

std::string DtypeName(c10::ScalarType type) {
  for (const auto& [jsName, known] : kDtypes) {
    if (known == type) return jsName;
  }
  return c10::toString(type);
}

c10::Device ParseDevice(const std::string& name) {
  try {
    return c10::Device(name);
  } catch (const c10::Error&) {
    throw std::invalid_argument("unknown device '" + name + "' (expected 'cpu', 'cuda' or 'cuda:N')");
  }
}

std::string DeviceName(const c10::Device& device) { return device.str(); }

}  // namespace tee
