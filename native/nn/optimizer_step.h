// One optimizer step of a parameter group in one native call, with LibTorch's multi-tensor
// (_foreach_) kernels: the arithmetic of PyTorch's single-tensor SGD and Adam, element for
// element (bias corrections with the C library's pow, as Python's), without a JS call per
// tensor. Parameters without a gradient are skipped. Each returns, per parameter: false
// (skipped), true (stepped), or the state it made at the parameter's first step.
#pragma once

#include <napi.h>

namespace tee {

// sgdStep(params, buffers, lr, momentum, dampening, weightDecay, nesterov, maximize):
// `buffers[i]` is parameter i's momentum buffer or null; a new buffer is what it makes.
Napi::Value SgdStep(const Napi::CallbackInfo& info);

// adamStep(params, expAvgs, expAvgSqs, steps, lr, beta1, beta2, eps, weightDecay, decoupled,
// maximize): `steps[i]` is parameter i's step count before this step, its moments null
// before the first; the pair [expAvg, expAvgSq] is what it makes.
Napi::Value AdamStep(const Napi::CallbackInfo& info);

}  // namespace tee
