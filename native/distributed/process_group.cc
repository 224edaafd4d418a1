#include "distributed/process_group.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/utils/tensor_flatten.h>

#include <cstdlib>
#include <functional>
#include <map>
#include <vector>

#include "node/errors.h"
#include "tensor/tensor.h"
#include "torch_compat.h"

namespace tee {
namespace {

using Milliseconds = std::chrono::milliseconds;

bool Contains(const std::string& text, const char* part) { return text.find(part) != std::string::npos; }

// Gloo's message, with what it most likely means for a user in front of it.
std::string Explain(const ProcessGroupHandle& handle, const std::string& message) {
  if (Contains(message, "closed by peer") || Contains(message, "reset by peer") || Contains(message, "Broken pipe") ||
      Contains(message, "Connection refused")) {
    std::string peer = handle.size == 2 ? " (rank " + std::to_string(1 - handle.rank) + ", the only other rank)" : "";
    return "a peer process left the group" + peer + ": " + message;
  }
  if (Contains(message, "Timed out") || Contains(message, "timed out") || Contains(message, "Timeout")) {
    return "no answer from a peer within the group's timeout of " + std::to_string(handle.timeout.count()) +
           " ms: " + message;
  }
  return message;
}

// The Gloo transport device: GLOO_SOCKET_IFNAME's interface when set (as in PyTorch), the
// master's own address on loopback, else the address this machine's hostname resolves to.
std::shared_ptr<::gloo::transport::Device> MakeDevice(const std::string& host) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname != '\0') {
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  if (host == "localhost" || host.rfind("127.", 0) == 0) return c10d::ProcessGroupGloo::createDeviceForHostname(host);
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

// What a collective leaves for JS once waited for.
using Settle = std::function<Napi::Value(Napi::Env)>;

// Waits on a libuv thread for c10d work, then runs `after` there (still off the event loop)
// and resolves with `settle`'s value.
class WorkWaiter : public Napi::AsyncWorker {
 public:
  WorkWaiter(Napi::Env env, std::shared_ptr<ProcessGroupHandle> handle, std::string what,
             std::function<c10::intrusive_ptr<c10d::Work>()> start, std::function<void()> after, Settle settle)
      : Napi::AsyncWorker(env, "torch-early-exit collective"), deferred_(Napi::Promise::Deferred::New(env)),
        handle_(std::move(handle)), what_(std::move(what)), start_(std::move(start)), after_(std::move(after)),
        settle_(std::move(settle)) {
    // Queued in call order on the main thread: every rank must issue collectives in one order.
    work_ = start_();
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      WaitOrThrow(*handle_, work_, what_);
      if (after_) after_();
    } catch (...) {
      SetError(DescribeCurrentException());
    }
  }

  void OnOK() override {
    try {
      deferred_.Resolve(settle_ ? settle_(Env()) : Env().Undefined());
    } catch (const Napi::Error& error) {
      deferred_.Reject(error.Value());
    }
  }

  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<ProcessGroupHandle> handle_;
  std::string what_;
  std::function<c10::intrusive_ptr<c10d::Work>()> start_;
  std::function<void()> after_;
  Settle settle_;
  c10::intrusive_ptr<c10d::Work> work_;
};

Napi::Promise Queue(Napi::Env env, std::shared_ptr<ProcessGroupHandle> handle, const std::string& what,
                    std::function<c10::intrusive_ptr<c10d::Work>()> start, std::function<void()> after = nullptr,
                    Settle settle = nullptr) {
  auto* worker = Guard(env, what.c_str(), [&] {
    return new WorkWaiter(env, handle, what, std::move(start), std::move(after), std::move(settle));
  });
  worker->Queue();
  return worker->Promise();
}

// Makes the store and the group on a libuv thread: both wait for every rank to arrive.
class GroupMaker : public Napi::AsyncWorker {
 public:
  GroupMaker(Napi::Env env, std::string host, int port, int rank, int size, Milliseconds timeout)
      : Napi::AsyncWorker(env, "torch-early-exit process group"), deferred_(Napi::Promise::Deferred::New(env)),
        host_(std::move(host)), port_(port), handle_(std::make_shared<ProcessGroupHandle>()) {
    handle_->rank = rank;
    handle_->size = size;
    handle_->timeout = timeout;
    handle_->master = host_ + ":" + std::to_string(port);
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      c10d::TCPStoreOptions options;
      options.port = static_cast<std::uint16_t>(port_);
      options.isServer = handle_->rank == 0;
      options.numWorkers = static_cast<std::size_t>(handle_->size);
      options.waitWorkers = true;
      options.timeout = handle_->timeout;
      TEE_TCPSTORE_CLASSIC_SERVER(options);
      try {
        handle_->store = c10::make_intrusive<c10d::TCPStore>(host_, options);
      } catch (...) {
        std::string message = DescribeCurrentException();
        // LibTorch 2.x's master waits for the other ranks here already; 1.13's, in the group below.
        bool waited = handle_->rank == 0 && Contains(message, "waiting for clients");
        throw std::runtime_error(std::string(waited ? "the ranks did not all connect at "
                                             : handle_->rank == 0 ? "could not serve the rendezvous at "
                                                                  : "could not reach the master at ") +
                                 handle_->master + " within " + std::to_string(handle_->timeout.count()) +
                                 " ms: " + message);
      }
      auto groupOptions = c10d::ProcessGroupGloo::Options::create(handle_->timeout);
      groupOptions->devices.push_back(MakeDevice(host_));
      try {
        handle_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(handle_->store, handle_->rank, handle_->size,
                                                                      groupOptions);
      } catch (...) {
        throw std::runtime_error("the ranks did not all connect at " + handle_->master + " within " +
                                 std::to_string(handle_->timeout.count()) + " ms: " + DescribeCurrentException());
      }
    } catch (...) {
      SetError(DescribeCurrentException());
    }
  }

  void OnOK() override {
    auto* owned = new std::shared_ptr<ProcessGroupHandle>(handle_);
    deferred_.Resolve(Napi::External<std::shared_ptr<ProcessGroupHandle>>::New(
        Env(), owned, [](Napi::Env, std::shared_ptr<ProcessGroupHandle>* held) { delete held; }));
  }

  void OnError(const Napi::Error& error) override {
    deferred_.Reject(Napi::Error::New(Env(), "initProcessGroup (rank " + std::to_string(handle_->rank) + " of " +
                                                 std::to_string(handle_->size) + "): " + error.Message())
                         .Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string host_;
  int port_;
  std::shared_ptr<ProcessGroupHandle> handle_;
};

c10d::ReduceOp ReduceOpFromName(Napi::Env env, const std::string& name) {
  if (name == "sum" || name == "avg") return c10d::ReduceOp::SUM;
  if (name == "max") return c10d::ReduceOp::MAX;
  if (name == "min") return c10d::ReduceOp::MIN;
  if (name == "product") return c10d::ReduceOp::PRODUCT;
  ThrowTypeError(env, "allReduce: op must be 'sum', 'avg', 'max', 'min' or 'product', not '" + name + "'");
}

// The tensor a collective works on: dense, contiguous, on the CPU (Gloo's requirements).
at::Tensor CollectiveTensor(Napi::Env env, const Napi::Value& value, const char* what) {
  const at::Tensor& tensor = Tensor::FromJs(value, what);
  if (!tensor.device().is_cpu()) ThrowError(env, std::string(what) + " is on " + tensor.device().str() + ": the gloo backend works on CPU tensors");
  if (!tensor.is_contiguous()) ThrowError(env, std::string(what) + " must be contiguous (call .contiguous() first)");
  return tensor;
}

}  // namespace

std::string ProcessGroupHandle::Where() const {
  return "rank " + std::to_string(rank) + " of " + std::to_string(size);
}

c10d::ProcessGroupGloo& ProcessGroupHandle::Group() const {
  if (!group) throw std::runtime_error("the process group was destroyed (destroyProcessGroup)");
  return *group;
}

std::shared_ptr<ProcessGroupHandle> ProcessGroupFromJs(const Napi::Value& value) {
  if (!value.IsExternal()) ThrowTypeError(value.Env(), "expected a process group (from initProcessGroup)");
  return *value.As<Napi::External<std::shared_ptr<ProcessGroupHandle>>>().Data();
}

void WaitOrThrow(const ProcessGroupHandle& handle, const c10::intrusive_ptr<c10d::Work>& work, const std::string& what) {
  try {
    work->wait();
  } catch (...) {
    throw std::runtime_error(what + " failed on " + handle.Where() + ": " + Explain(handle, DescribeCurrentException()));
  }
}

Napi::Value CreateProcessGroup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string host = info[0].As<Napi::String>().Utf8Value();
  int port = info[1].As<Napi::Number>().Int32Value();
  int rank = info[2].As<Napi::Number>().Int32Value();
  int size = info[3].As<Napi::Number>().Int32Value();
  auto timeout = Milliseconds(info[4].As<Napi::Number>().Int64Value());
  auto* maker = new GroupMaker(env, host, port, rank, size, timeout);
  maker->Queue();
  return maker->Promise();
}

Napi::Value DestroyProcessGroup(const Napi::CallbackInfo& info) {
  std::shared_ptr<ProcessGroupHandle> handle = ProcessGroupFromJs(info[0]);
  handle->group.reset();
  handle->store.reset();
  return info.Env().Undefined();
}

Napi::Value AllReduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto handle = ProcessGroupFromJs(info[0]);
  at::Tensor tensor = CollectiveTensor(env, info[1], "allReduce's tensor");
  std::string name = info[2].As<Napi::String>().Utf8Value();
  c10d::AllreduceOptions options;
  options.reduceOp = ReduceOpFromName(env, name);
  // Gloo has no average: the sum, divided by the world size once every rank's part is in.
  std::function<void()> after;
  if (name == "avg") {
    if (!at::isFloatingType(tensor.scalar_type())) ThrowError(env, "allReduce: 'avg' needs a floating-point tensor, not " + std::string(c10::toString(tensor.scalar_type())));
    after = [tensor, size = handle->size]() mutable {
      c10::NoGradGuard noGrad;
      tensor.div_(size);
    };
  }
  return Queue(env, handle, "allReduce(" + name + ")", [handle, tensor, options]() mutable {
    std::vector<at::Tensor> tensors{tensor};
    return handle->Group().allreduce(tensors, options);
  }, after);
}

Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto handle = ProcessGroupFromJs(info[0]);
  at::Tensor tensor = CollectiveTensor(env, info[1], "broadcast's tensor");
  c10d::BroadcastOptions options;
  options.rootRank = info[2].As<Napi::Number>().Int32Value();
  return Queue(env, handle, "broadcast from rank " + std::to_string(options.rootRank), [handle, tensor, options]() mutable {
    std::vector<at::Tensor> tensors{tensor};
    return handle->Group().broadcast(tensors, options);
  });
}

Napi::Value AllGather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto handle = ProcessGroupFromJs(info[0]);
  at::Tensor tensor = CollectiveTensor(env, info[1], "allGather's tensor");
  auto outputs = std::make_shared<std::vector<std::vector<at::Tensor>>>(1);
  for (int r = 0; r < handle->size; ++r) (*outputs)[0].push_back(at::empty_like(tensor));
  return Queue(
      env, handle, "allGather",
      [handle, tensor, outputs]() mutable {
        std::vector<at::Tensor> inputs{tensor};
        return handle->Group().allgather(*outputs, inputs);
      },
      nullptr,
      [outputs](Napi::Env env) -> Napi::Value {
        Napi::Array result = Napi::Array::New(env, (*outputs)[0].size());
        for (uint32_t r = 0; r < (*outputs)[0].size(); ++r) result.Set(r, Tensor::Wrap(env, (*outputs)[0][r]));
        return result;
      });
}

Napi::Value Barrier(const Napi::CallbackInfo& info) {
  auto handle = ProcessGroupFromJs(info[0]);
  return Queue(info.Env(), handle, "barrier", [handle]() { return handle->Group().barrier(); });
}

Napi::Value BroadcastCoalesced(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto handle = ProcessGroupFromJs(info[0]);
  Napi::Array jsTensors = info[1].As<Napi::Array>();
  int root = info[2].As<Napi::Number>().Int32Value();
  // One flat message per dtype, in the order the tensors came.
  std::map<at::ScalarType, std::vector<at::Tensor>> byType;
  for (uint32_t i = 0; i < jsTensors.Length(); ++i) {
    at::Tensor tensor = CollectiveTensor(env, jsTensors.Get(i), "a broadcast tensor");
    byType[tensor.scalar_type()].push_back(tensor);
  }
  c10::NoGradGuard noGrad;
  c10d::BroadcastOptions options;
  options.rootRank = root;
  for (auto& [type, tensors] : byType) {
    std::vector<at::Tensor> flat{torch::utils::flatten_dense_tensors(tensors)};
    WaitOrThrow(*handle, handle->Group().broadcast(flat, options), "broadcast of parameters and buffers from rank " + std::to_string(root));
    if (handle->rank == root) continue;
    std::vector<at::Tensor> parts = torch::utils::unflatten_dense_tensors(flat[0], tensors);
    for (size_t k = 0; k < tensors.size(); ++k) tensors[k].copy_(parts[k]);
  }
  return env.Undefined();
}

}  // namespace tee
