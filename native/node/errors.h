// Turns every C++ exception into a JS Error carrying the whole message.
#pragma once

#include <napi.h>

#include <string>

namespace tee {

// The message of a C++ exception as a user should read it: c10::Error without the C++
// backtrace (which says nothing to a Node user), anything else whole.
std::string DescribeCurrentException();

// Runs `body`; a C++ exception leaves as a JS Error whose message starts with `context`
// (when given) and carries LibTorch's message whole. Napi::Error passes through untouched.
template <typename Body>
auto Guard(Napi::Env env, const char* context, Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    std::string message = DescribeCurrentException();
    if (context != nullptr && *context != '\0') message = std::string(context) + ": " + message;
    throw Napi::Error::New(env, message);
  }
}

[[noreturn]] void ThrowTypeError(Napi::Env env, const std::string& message);
[[noreturn]] void ThrowError(Napi::Env env, const std::string& message);

}  // namespace tee

// Registers an instance method whose C++ exceptions become JS Errors.
#define TEE_METHOD(Class, jsName, Method)                                         \
  InstanceMethod(jsName, &Class::template Guarded<&Class::Method>)

namespace tee {

// Base for the addon's ObjectWrap classes: gives each method the exception guard.
template <typename T>
class GuardedWrap : public Napi::ObjectWrap<T> {
 public:
  using Napi::ObjectWrap<T>::ObjectWrap;

  template <Napi::Value (T::*Method)(const Napi::CallbackInfo&)>
  Napi::Value Guarded(const Napi::CallbackInfo& info) {
    return Guard(info.Env(), nullptr, [&] { return (static_cast<T*>(this)->*Method)(info); });
  }
};

}  // namespace tee
