// LibTorch's own pickler: the torch.save files this library wrote before it wrote Python's
// format itself (lib/io/pickle.ts). Kept so that tests can make such files and check they load.
#pragma once

#include <napi.h>

namespace tee {

// pickleSave(value) -> Buffer, for a dict of tensors and other TorchScript values.
Napi::Value PickleSave(const Napi::CallbackInfo& info);

}  // namespace tee
