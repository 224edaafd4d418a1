#include "node/errors.h"

#include <typeinfo>

#include <c10/util/Exception.h>

#include <exception>
#include <stdexcept>

namespace tee {

std::string DescribeCurrentException() {
  try {
    throw;
  } catch (const c10::Error& error) {
    std::string message = error.what_without_backtrace();
    return message.empty() ? "LibTorch raised an error without a message" : message;
  } catch (const std::exception& error) {
    std::string message = error.what();
    return message.empty() ? std::string("LibTorch raised ") + typeid(error).name() + " without a message" : message;
  } catch (...) {
    return "unknown C++ exception";
  }
}

void ThrowTypeError(Napi::Env env, const std::string& message) {
  throw Napi::TypeError::New(env, message);
}

void ThrowError(Napi::Env env, const std::string& message) {
  throw Napi::Error::New(env, message);
}

}  // namespace tee
