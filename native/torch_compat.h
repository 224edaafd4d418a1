// The differences between the LibTorch versions the addon builds against, in one place.
#pragma once

#include <torch/version.h>

#define TEE_TORCH_IS(major, minor) (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR == (minor))

#define TEE_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// c10::Allocator::allocate lost its const in LibTorch 2.3, which also made copy_data pure virtual.
#if TEE_TORCH_AT_LEAST(2, 3)
#define TEE_ALLOCATE_CONST
#define TEE_ALLOCATOR_COPY_DATA                                                      \
  void copy_data(void* dest, const void* src, std::size_t count) const override { \
    default_copy_data(dest, src, count);                                           \
  }
#else
#define TEE_ALLOCATE_CONST const
#define TEE_ALLOCATOR_COPY_DATA
#endif
