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
// oneDNN 3.7 to 3.8.0 (Debian 13's LibTorch 2.6 has 3.7) misplaces elements in its jit reorder
// to and from some layouts that block two dimensions (oneDNN issue 3280, fixed in 3.8.1), as the
// brgemm kernels' weights are laid out: "AB16b64a" for a 1280-to-1000 linear layer came out
// with 1% of its elements wrong. The chains place weights themselves there and refuse such
// activation reorders.
#if defined(DNNL_VERSION_MAJOR)
#define TEE_ONEDNN_REORDER_WRONG \
  (DNNL_VERSION_MAJOR == 3 && (DNNL_VERSION_MINOR == 7 || (DNNL_VERSION_MINOR == 8 && DNNL_VERSION_PATCH < 1)))
// oneDNN 3.7's format_tag::any puts its brgemm depthwise convolutions in channels-last between
// blocked 1x1 ones, a reorder on each side: MobileNetV2 ran 1.12x onnxruntime's time at batch 1
// and 1.18x at 64 that way, against 1.05x and 1.02x on its older jit kernels, which read the
// blocked layout they are given. The chains take the jit kernels for convolutions there; oneDNN
// 3.12 lays its kernels out well itself. Measured again, paired in one process: with `any`
// alone, ResNet-20 at batch 64 took 1.08x the jit kernels' time (its strided 1x1 convolutions
// go to channels-last brgemm, four reorders) and MobileNetV2 at batch 1 1.10x; a convolution
// given its producer's layout with whichever kernel takes it chose the jit kernels throughout.
#define TEE_ONEDNN_PREFER_JIT (DNNL_VERSION_MAJOR == 3 && DNNL_VERSION_MINOR < 8)
#endif
