#include "nn/optimizer_step.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <vector>

#include "node/errors.h"
#include "tensor/tensor.h"

namespace tee {
namespace {

// The parameters of a group that have a gradient, their gradients and their positions.
struct WithGrads {
  std::vector<at::Tensor> params;
  std::vector<at::Tensor> grads;
  std::vector<uint32_t> positions;
};

WithGrads Collect(const Napi::Array& params) {
  WithGrads found;
  for (uint32_t i = 0; i < params.Length(); ++i) {
    const at::Tensor& param = Tensor::FromJs(params.Get(i), "optimizer parameter");
    const at::Tensor& grad = param.grad();
    if (!grad.defined()) continue;
    found.params.push_back(param);
    found.grads.push_back(grad);
    found.positions.push_back(i);
  }
  return found;
}

double Number(const Napi::CallbackInfo& info, size_t index) { return info[index].As<Napi::Number>().DoubleValue(); }

// false for each parameter, then true for those that have a gradient.
Napi::Array Stepped(Napi::Env env, uint32_t count, const WithGrads& group) {
  Napi::Array result = Napi::Array::New(env, count);
  for (uint32_t i = 0; i < count; ++i) result.Set(i, Napi::Boolean::New(env, false));
  for (uint32_t position : group.positions) result.Set(position, Napi::Boolean::New(env, true));
  return result;
}

bool Missing(const Napi::Value& value) { return value.IsNull() || value.IsUndefined(); }

}  // namespace

Napi::Value SgdStep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array jsParams = info[0].As<Napi::Array>();
  Napi::Array jsBuffers = info[1].As<Napi::Array>();
  double lr = Number(info, 2), momentum = Number(info, 3), dampening = Number(info, 4), weightDecay = Number(info, 5);
  bool nesterov = info[6].ToBoolean(), maximize = info[7].ToBoolean();
  c10::NoGradGuard noGrad;
  WithGrads group = Collect(jsParams);
  Napi::Array made = Stepped(env, jsParams.Length(), group);
  if (group.params.empty()) return made;

  std::vector<at::Tensor> steps = maximize ? at::_foreach_neg(group.grads) : group.grads;
  if (weightDecay != 0) steps = at::_foreach_add(steps, group.params, weightDecay);
  if (momentum != 0) {
    // A parameter's first step starts its buffer as a copy of the step; later ones update it.
    std::vector<at::Tensor> buffers(group.params.size());
    std::vector<at::Tensor> kept, keptSteps;
    for (size_t k = 0; k < group.params.size(); ++k) {
      Napi::Value buffer = jsBuffers.Get(group.positions[k]);
      if (Missing(buffer)) {
        buffers[k] = steps[k].clone().detach();
        made.Set(group.positions[k], Tensor::Wrap(env, buffers[k]));
      } else {
        buffers[k] = Tensor::FromJs(buffer, "momentum buffer");
        kept.push_back(buffers[k]);
        keptSteps.push_back(steps[k]);
      }
    }
    if (!kept.empty()) {
      at::_foreach_mul_(kept, momentum);
      at::_foreach_add_(kept, keptSteps, 1 - dampening);
    }
    steps = nesterov ? at::_foreach_add(steps, buffers, momentum) : buffers;
  }
  at::_foreach_add_(group.params, steps, -lr);
  return made;
}

Napi::Value AdamStep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array jsParams = info[0].As<Napi::Array>();
  Napi::Array jsExpAvgs = info[1].As<Napi::Array>();
  Napi::Array jsExpAvgSqs = info[2].As<Napi::Array>();
  Napi::Array jsSteps = info[3].As<Napi::Array>();
  double lr = Number(info, 4), beta1 = Number(info, 5), beta2 = Number(info, 6), eps = Number(info, 7);
  double weightDecay = Number(info, 8);
  bool decoupled = info[9].ToBoolean(), maximize = info[10].ToBoolean();
  c10::NoGradGuard noGrad;
  WithGrads group = Collect(jsParams);
  Napi::Array made = Stepped(env, jsParams.Length(), group);
  if (group.params.empty()) return made;

  std::vector<at::Tensor> expAvgs, expAvgSqs;
  std::vector<c10::Scalar> denominators, stepSizes;
  for (size_t k = 0; k < group.params.size(); ++k) {
    uint32_t position = group.positions[k];
    if (Missing(jsExpAvgs.Get(position))) {
      expAvgs.push_back(at::zeros_like(group.params[k], at::MemoryFormat::Preserve));
      expAvgSqs.push_back(at::zeros_like(group.params[k], at::MemoryFormat::Preserve));
      Napi::Array pair = Napi::Array::New(env, 2);
      pair.Set(0u, Tensor::Wrap(env, expAvgs.back()));
      pair.Set(1u, Tensor::Wrap(env, expAvgSqs.back()));
      made.Set(position, pair);
    } else {
      expAvgs.push_back(Tensor::FromJs(jsExpAvgs.Get(position), "exp_avg"));
      expAvgSqs.push_back(Tensor::FromJs(jsExpAvgSqs.Get(position), "exp_avg_sq"));
    }
    double step = jsSteps.Get(position).As<Napi::Number>().DoubleValue() + 1;
    // Parameters of a group may have taken different numbers of steps (one had no
    // gradient once), so the bias corrections are per parameter.
    denominators.emplace_back(std::sqrt(1 - std::pow(beta2, step)));
    stepSizes.emplace_back(-lr / (1 - std::pow(beta1, step)));
  }
  std::vector<at::Tensor> grads = maximize ? at::_foreach_neg(group.grads) : group.grads;
  if (decoupled) {
    at::_foreach_mul_(group.params, 1 - lr * weightDecay);
  } else if (weightDecay != 0) {
    grads = at::_foreach_add(grads, group.params, weightDecay);
  }
  at::_foreach_mul_(expAvgs, beta1);
  at::_foreach_add_(expAvgs, grads, 1 - beta1);
  at::_foreach_mul_(expAvgSqs, beta2);
  at::_foreach_addcmul_(expAvgSqs, grads, grads, 1 - beta2);
  std::vector<at::Tensor> denom = at::_foreach_sqrt(expAvgSqs);
  at::_foreach_div_(denom, denominators);
  at::_foreach_add_(denom, eps);
  at::_foreach_addcdiv_(group.params, expAvgs, denom, stepSizes);
  return made;
}

}  // namespace tee
