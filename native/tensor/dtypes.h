// Names of dtypes and devices as the JS API spells them.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace tee {

// 'float32' -> at::kFloat; throws std::invalid_argument naming the supported dtypes.
c10::ScalarType ParseDtype(const std::string& name);
std::string DtypeName(c10::ScalarType type);
// 'cpu', 'cuda', 'cuda:1'; throws std::invalid_argument for anything else.
c10::Device ParseDevice(const std::string& name);
std::string DeviceName(const c10::Device& device);

}  // namespace tee
