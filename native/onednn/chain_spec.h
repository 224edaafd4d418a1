// What a oneDNN chain computes, independent of any input shape: the operations of one run of
// a frozen graph's nodes, in the graph's order, over numbered values. Values 0..inputs-1 are
// the tensors the chain is given; every other value is made by exactly one operation. An
// activation or residual add that follows a convolution or linear layer whose output nothing
// else reads is not an operation of its own but a post-op of that layer.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tee::onednn {

enum class OpKind { kConvolution, kLinear, kEltwise, kAdd, kMaxPool, kAvgPool, kAdaptiveAvgPool, kFlatten };

// An element-wise activation, as oneDNN's eltwise algorithms name them.
enum class Activation { kRelu, kClip, kHardswish, kGeluErf, kGeluTanh };

struct PostOp {
  bool add = false;        // a residual add of `operand`; else the activation below
  int operand = -1;        // the value added
  Activation activation = Activation::kRelu;
  float alpha = 0, beta = 0;  // clip's bounds
};

struct ChainOp {
  OpKind kind = OpKind::kConvolution;
  std::vector<int> inputs;  // values read: the source, and for kAdd the second operand
  int output = -1;
  std::string where;        // the graph node it came from, for errors

  // Convolution and linear: the frozen weights (batch norm already folded in).
  at::Tensor weight, bias;
  std::vector<int64_t> stride, padding, dilation, kernel;  // also pooling's
  int64_t groups = 1;
  bool ceilMode = false, countIncludePad = true;
  std::vector<int64_t> outputSize;  // adaptive average pooling

  Activation activation = Activation::kRelu;  // kEltwise
  float alpha = 0, beta = 0;
  std::vector<PostOp> postOps;
};

struct ChainSpec {
  int inputs = 0;
  int values = 0;
  std::vector<int> outputs;
  std::vector<ChainOp> ops;
};

}  // namespace tee::onednn
