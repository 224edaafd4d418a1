#include "node/runtime.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <c10/core/GradMode.h>
#include <torch/cuda.h>
#include <torch/utils.h>
#include <torch/version.h>

#include <dlfcn.h>

#include <string>

#include "memory/cpu_block_cache.h"
#include "node/errors.h"
#include "tensor/tensor.h"

namespace tee {
namespace {

// Debian's LibTorch calls into an OpenBLAS with its own pthread pool, which
// at::set_num_threads does not reach; it is looked up at run time because the BLAS
// LibTorch was built with may be another one.
void SetBlasThreads(int threads) {
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(threads);
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  int threads = info[0].As<Napi::Number>().Int32Value();
  if (threads < 1) ThrowError(info.Env(), "setNumThreads needs a positive number of threads");
  at::set_num_threads(threads);
  SetBlasThreads(threads);
  return info.Env().Undefined();
}

Napi::Value GetNumThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), at::get_num_threads());
}

Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  torch::manual_seed(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
  return info.Env().Undefined();
}

// randpermWithSeed(n, seed): torch.randperm(n, generator=torch.Generator().manual_seed(seed)),
// leaving the default generator alone (DistributedSampler's shuffle).
Napi::Value RandpermWithSeed(const Napi::CallbackInfo& info) {
  return Guard(info.Env(), "randperm", [&] {
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value()));
    return Tensor::Wrap(info.Env(), at::randperm(info[0].As<Napi::Number>().Int64Value(), generator));
  });
}

// torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32: whether CUDA
// convolutions and matrix products may round their float32 inputs to TF32 (on by default for
// cuDNN, off for cuBLAS, as in PyTorch). Process-wide, like PyTorch's.
Napi::Value AllowTF32CuDNN(const Napi::CallbackInfo& info) {
  if (info.Length() > 0) at::globalContext().setAllowTF32CuDNN(info[0].ToBoolean());
  return Napi::Boolean::New(info.Env(), at::globalContext().allowTF32CuDNN());
}

Napi::Value AllowTF32CuBLAS(const Napi::CallbackInfo& info) {
  if (info.Length() > 0) at::globalContext().setAllowTF32CuBLAS(info[0].ToBoolean());
  return Napi::Boolean::New(info.Env(), at::globalContext().allowTF32CuBLAS());
}

// Grad mode is thread-local; async work copies the caller's mode to its worker thread.
Napi::Value SetGradEnabled(const Napi::CallbackInfo& info) {
  c10::GradMode::set_enabled(info[0].ToBoolean());
  return info.Env().Undefined();
}

Napi::Value IsGradEnabled(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), c10::GradMode::is_enabled());
}

Napi::Value CudaIsAvailable(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), torch::cuda::is_available());
}

Napi::Value CudaDeviceCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(torch::cuda::device_count()));
}

// The loaded library's own build settings name its version; the macro above is the
// version of the headers the addon was compiled with.
std::string LoadedLibTorchVersion() {
  std::string config = at::show_config();
  std::string key = "TORCH_VERSION=";
  size_t start = config.find(key);
  if (start == std::string::npos) return "";
  start += key.size();
  size_t end = config.find_first_of(", \n", start);
  return config.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

Napi::Value EmptyCache(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(CpuCacheEmpty()));
}

Napi::Value MemoryStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CpuCacheStats stats = CpuCacheStatistics();
  Napi::Object result = Napi::Object::New(env);
  auto set = [&](const char* name, int64_t value) { result.Set(name, Napi::Number::New(env, static_cast<double>(value))); };
  result.Set("enabled", Napi::Boolean::New(env, stats.enabled));
  set("limitBytes", stats.limitBytes);
  set("allocatedBytes", stats.allocatedBytes);
  set("peakAllocatedBytes", stats.peakAllocatedBytes);
  set("cachedBytes", stats.cachedBytes);
  set("reservedBytes", stats.reservedBytes);
  set("peakReservedBytes", stats.peakReservedBytes);
  set("cacheHits", stats.cacheHits);
  set("cacheMisses", stats.cacheMisses);
  set("releasedOverLimit", stats.releasedOverLimit);
  return result;
}

Napi::Value ResetPeakMemoryStats(const Napi::CallbackInfo& info) {
  CpuCacheResetPeaks();
  return info.Env().Undefined();
}

}  // namespace

void ExportRuntime(Napi::Env env, Napi::Object exports) {
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads));
  exports.Set("emptyCache", Napi::Function::New(env, EmptyCache));
  exports.Set("memoryStats", Napi::Function::New(env, MemoryStats));
  exports.Set("resetPeakMemoryStats", Napi::Function::New(env, ResetPeakMemoryStats));
  exports.Set("getNumThreads", Napi::Function::New(env, GetNumThreads));
  exports.Set("manualSeed", Napi::Function::New(env, ManualSeed));
  exports.Set("randpermWithSeed", Napi::Function::New(env, RandpermWithSeed));
  exports.Set("setGradEnabled", Napi::Function::New(env, SetGradEnabled));
  exports.Set("isGradEnabled", Napi::Function::New(env, IsGradEnabled));
  exports.Set("cudaIsAvailable", Napi::Function::New(env, CudaIsAvailable));
  exports.Set("cudaDeviceCount", Napi::Function::New(env, CudaDeviceCount));
  exports.Set("allowTF32CuDNN", Napi::Function::New(env, AllowTF32CuDNN));
  exports.Set("allowTF32CuBLAS", Napi::Function::New(env, AllowTF32CuBLAS));
  exports.Set("libtorchVersion", Napi::String::New(env, TORCH_VERSION));
  exports.Set("loadedLibtorchVersion", Napi::String::New(env, LoadedLibTorchVersion()));
#ifdef TEE_WITH_CUDA
  exports.Set("builtWithCuda", Napi::Boolean::New(env, true));
#else
  exports.Set("builtWithCuda", Napi::Boolean::New(env, false));
#endif
}

}  // namespace tee
