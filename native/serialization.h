// Files that Python's torch.load reads and writes (torch.save's zip format).
#pragma once

#include <napi.h>

namespace tee {

// pickleSave(value) -> Buffer, for a dict of tensors and other TorchScript values.
Napi::Value PickleSave(const Napi::CallbackInfo& info);
// pickleLoad(buffer) -> value.
Napi::Value PickleLoad(const Napi::CallbackInfo& info);

}  // namespace tee
