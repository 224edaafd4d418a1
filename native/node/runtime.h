// Process-wide LibTorch settings: threads, seeds, grad mode, devices, versions.
#pragma once

#include <napi.h>

namespace tee {

void ExportRuntime(Napi::Env env, Napi::Object exports);

}  // namespace tee
