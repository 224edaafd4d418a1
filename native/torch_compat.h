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

// c10d's TCPStoreOptions gained useLibUV in LibTorch 2.2 and made the libuv server the default
// in 2.4; Debian 13's 2.6 is built without libuv, where asking for it fails. The classic
// server, which every version has, is what the store asks for.
#if TEE_TORCH_AT_LEAST(2, 2)
#define TEE_TCPSTORE_CLASSIC_SERVER(options) ((options).useLibUV = false)
#else
#define TEE_TCPSTORE_CLASSIC_SERVER(options) ((void)(options))
#endif

// oneDNN, which LibTorch links and the chains call (native/onednn/), differs by version too.
// oneDNN 3.7 (Debian 13's LibTorch 2.6) computes some convolutions and linear layers wrongly
// in its brgemm kernels (brgconv_1x1, brg_conv_fwd, brdgmm_dw, brgemm), which it picks for
// channels-last and for inner products: ResNet-18's last downsample (256 to 512 channels, 4x4
// to 2x2) and MobileNetV2's last projection (960 to 320 channels at 2x2) at 64 px, MobileNetV2
// at 224 px and its 1280-to-1000 classifier came out off by 0.1 or more, where oneDNN 3.12
// computes them right. LibTorch's own layers there run the older jit kernels, and so do the
// chains: they take the next kernel.
#if defined(DNNL_VERSION_MAJOR)
#define TEE_ONEDNN_BRGEMM_WRONG (DNNL_VERSION_MAJOR == 3 && DNNL_VERSION_MINOR < 8)
#endif
