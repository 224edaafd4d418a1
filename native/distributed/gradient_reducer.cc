#include "distributed/gradient_reducer.h"

#include "distributed/process_group.h"  // first: see its note on <fcntl.h>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/engine.h>

#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "node/errors.h"
#include "tensor/tensor.h"

namespace tee {
namespace {

struct Bucket {
  at::Tensor flat;              // the averaged-to-be gradients, one after another
  std::vector<size_t> params;   // positions in Reducer::params
  size_t pending = 0;           // gradients not yet in this backward
  c10::intrusive_ptr<c10d::Work> work;
};

struct Slot {
  size_t bucket = 0;
  int64_t offset = 0;
  bool ready = false;    // its gradient is in the bucket
  bool hadGrad = false;  // .grad was defined before this backward (accumulation)
};

class Reducer : public std::enable_shared_from_this<Reducer> {
 public:
  Reducer(std::shared_ptr<ProcessGroupHandle> handle, std::vector<at::Tensor> params, int64_t capBytes,
          int64_t firstCapBytes)
      : handle_(std::move(handle)), params_(std::move(params)), slots_(params_.size()) {
    Assign(capBytes, firstCapBytes);
  }

  ~Reducer() { RemoveHooks(); }

  void AddHooks() {
    std::weak_ptr<Reducer> weak = weak_from_this();
    for (size_t i = 0; i < params_.size(); ++i) {
      hookIds_.push_back(params_[i].register_hook([weak, i](const at::Tensor& grad) -> at::Tensor {
        std::shared_ptr<Reducer> self = weak.lock();
        return self ? self->OnGradient(i, grad) : at::Tensor();
      }));
    }
  }

  void RemoveHooks() {
    for (size_t i = 0; i < hookIds_.size(); ++i) params_[i].remove_hook(hookIds_[i]);
    hookIds_.clear();
  }

  void Prepare() {
    // A backward that failed before its end left work behind: settle it and start clean.
    if (callbackQueued_) Abandon();
    expectHooks_ = true;
  }

  const std::vector<Bucket>& buckets() const { return buckets_; }

 private:
  // Buckets by dtype, parameters in reverse order (the order backward tends to produce their
  // gradients): the first bucket of a dtype closes at `firstCapBytes`, the rest at `capBytes`.
  void Assign(int64_t capBytes, int64_t firstCapBytes) {
    std::map<at::ScalarType, std::pair<std::vector<size_t>, int64_t>> open;
    std::map<at::ScalarType, int> closed;
    auto close = [&](at::ScalarType type) {
      auto& [members, bytes] = open[type];
      if (members.empty()) return;
      Bucket bucket;
      int64_t offset = 0;
      for (size_t i : members) {
        slots_[i].bucket = buckets_.size();
        slots_[i].offset = offset;
        offset += params_[i].numel();
      }
      bucket.flat = at::zeros({offset}, params_[members[0]].options().requires_grad(false));
      bucket.params = members;
      buckets_.push_back(std::move(bucket));
      members.clear();
      bytes = 0;
      ++closed[type];
    };
    for (size_t k = params_.size(); k-- > 0;) {
      const at::Tensor& param = params_[k];
      at::ScalarType type = param.scalar_type();
      auto& [members, bytes] = open[type];
      members.push_back(k);
      bytes += param.numel() * static_cast<int64_t>(param.element_size());
      if (bytes >= (closed[type] == 0 ? firstCapBytes : capBytes)) close(type);
    }
    for (auto& entry : open) close(entry.first);
    for (Bucket& bucket : buckets_) bucket.pending = bucket.params.size();
  }

  at::Tensor OnGradient(size_t i, const at::Tensor& grad) {
    if (!expectHooks_) return at::Tensor();
    c10::NoGradGuard noGrad;
    if (!callbackQueued_) {
      std::weak_ptr<Reducer> weak = weak_from_this();
      torch::autograd::Engine::get_default_engine().queue_callback([weak] {
        if (std::shared_ptr<Reducer> self = weak.lock()) self->Finish();
      });
      callbackQueued_ = true;
    }
    Slot& slot = slots_[i];
    if (slot.ready) {
      throw std::runtime_error("DistributedDataParallel: parameter " + std::to_string(i) +
                               " got a second gradient in one backward (one forward per backward, please)");
    }
    const at::Tensor& param = params_[i];
    Bucket& bucket = buckets_[slot.bucket];
    // Divided before the sum, as PyTorch's Reducer does (it keeps large sums in range).
    at::Tensor view = bucket.flat.narrow(0, slot.offset, param.numel()).view(param.sizes());
    view.copy_(grad);
    view.mul_(1.0 / handle_->size);
    slot.ready = true;
    slot.hadGrad = param.grad().defined();
    if (--bucket.pending == 0) Launch(bucket);
    // An accumulated gradient gets the average added to it: let backward add nothing.
    return slot.hadGrad ? at::zeros_like(grad) : at::Tensor();
  }

  void Launch(Bucket& bucket) {
    std::vector<at::Tensor> tensors{bucket.flat};
    bucket.work = handle_->Group().allreduce(tensors);
  }

  // Backward's last step: every bucket sent (with zeros for parameters that got no gradient
  // here), waited for, and the averages written into the gradients.
  void Finish() {
    c10::NoGradGuard noGrad;
    for (Bucket& bucket : buckets_) {
      if (bucket.work) continue;
      for (size_t i : bucket.params) {
        if (!slots_[i].ready) bucket.flat.narrow(0, slots_[i].offset, params_[i].numel()).zero_();
      }
      Launch(bucket);
    }
    try {
      for (size_t b = 0; b < buckets_.size(); ++b) {
        WaitOrThrow(*handle_, buckets_[b].work,
                    "DistributedDataParallel: the all-reduce of gradient bucket " + std::to_string(b) + " (" +
                        std::to_string(buckets_[b].params.size()) + " parameters)");
      }
    } catch (...) {
      Abandon();
      throw;
    }
    for (size_t i = 0; i < params_.size(); ++i) {
      at::Tensor& param = params_[i];
      const Slot& slot = slots_[i];
      at::Tensor average = buckets_[slot.bucket].flat.narrow(0, slot.offset, param.numel()).view(param.sizes());
      at::Tensor grad = param.grad();
      if (slot.ready && !slot.hadGrad) {
        grad.copy_(average);
      } else if (grad.defined()) {
        grad.add_(average);
      } else {
        param.mutable_grad() = average.clone();
      }
    }
    Reset();
  }

  // Waits for what was sent (its failures were or will be reported elsewhere) and resets.
  void Abandon() {
    for (Bucket& bucket : buckets_) {
      if (!bucket.work) continue;
      try {
        bucket.work->wait();
      } catch (...) {
      }
    }
    Reset();
  }

  void Reset() {
    for (Bucket& bucket : buckets_) {
      bucket.work.reset();
      bucket.pending = bucket.params.size();
    }
    for (Slot& slot : slots_) slot.ready = slot.hadGrad = false;
    expectHooks_ = false;
    callbackQueued_ = false;
  }

  std::shared_ptr<ProcessGroupHandle> handle_;
  std::vector<at::Tensor> params_;
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  std::vector<unsigned> hookIds_;
  bool expectHooks_ = false;
  bool callbackQueued_ = false;
};

using Handle = std::shared_ptr<Reducer>;

Reducer& FromJs(const Napi::Value& value) {
  if (!value.IsExternal()) ThrowTypeError(value.Env(), "expected a gradient reducer");
  return **value.As<Napi::External<Handle>>().Data();
}

}  // namespace

Napi::Value CreateGradientReducer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<ProcessGroupHandle> group = ProcessGroupFromJs(info[0]);
  Napi::Array jsParams = info[1].As<Napi::Array>();
  std::vector<at::Tensor> params;
  for (uint32_t i = 0; i < jsParams.Length(); ++i) {
    const at::Tensor& param = Tensor::FromJs(jsParams.Get(i), "a parameter");
    if (!param.requires_grad()) ThrowError(env, "DistributedDataParallel: parameter " + std::to_string(i) + " does not require grad");
    if (!param.device().is_cpu()) ThrowError(env, "DistributedDataParallel: parameter " + std::to_string(i) + " is on " + param.device().str() + ": the gloo backend works on CPU tensors");
    params.push_back(param);
  }
  auto reducer = std::make_shared<Reducer>(group, std::move(params), info[2].As<Napi::Number>().Int64Value(),
                                           info[3].As<Napi::Number>().Int64Value());
  reducer->AddHooks();
  return Napi::External<Handle>::New(env, new Handle(std::move(reducer)), [](Napi::Env, Handle* held) { delete held; });
}

Napi::Value ReducerPrepare(const Napi::CallbackInfo& info) {
  FromJs(info[0]).Prepare();
  return info.Env().Undefined();
}

Napi::Value ReducerBuckets(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::vector<Bucket>& buckets = FromJs(info[0]).buckets();
  Napi::Array result = Napi::Array::New(env, buckets.size());
  for (uint32_t b = 0; b < buckets.size(); ++b) {
    Napi::Array members = Napi::Array::New(env, buckets[b].params.size());
    for (uint32_t k = 0; k < buckets[b].params.size(); ++k) members.Set(k, Napi::Number::New(env, static_cast<double>(buckets[b].params[k])));
    result.Set(b, members);
  }
  return result;
}

Napi::Value ReducerRemove(const Napi::CallbackInfo& info) {
  FromJs(info[0]).RemoveHooks();
  return info.Env().Undefined();
}

}  // namespace tee
