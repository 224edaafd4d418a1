// Loads an exported program (torch.export) described by lib/torch/export.ts: its modules
// become module objects with their parameters and buffers, so that everything that takes a
// ScriptModule takes it, and their root's forward is the interpreter of the program's graph.
#pragma once

#include <napi.h>

namespace tee {

// loadExportedProgram(description, name) -> NativeScriptModule. `name` (the file) is for
// messages; the description's layout is documented in lib/torch/export.ts (NativeProgram).
Napi::Value LoadExportedProgram(const Napi::CallbackInfo& info);

}  // namespace tee
