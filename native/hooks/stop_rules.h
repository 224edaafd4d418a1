// Stop rules: a hook's output may end the forward call when every sample in the batch is
// confident enough, so that nothing after the hooked module runs.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace tee {

struct StopRule {
  enum class Kind { kEntropy, kMaxProbability, kMargin, kPatience };
  int64_t hookId = 0;
  Kind kind = Kind::kEntropy;
  double threshold = 0;
  // Samples that meet the rule leave the batch here while the others go on, instead of
  // the batch stopping only when every sample meets it. Only where the hooked module's
  // output is the one batch-sized value the rest of the forward uses.
  bool perSample = false;
};

// Parses 'entropy', 'maxProbability', 'margin', 'patience'; throws std::invalid_argument.
StopRule::Kind ParseStopRuleKind(const std::string& name);

// What patience needs to remember between the hooks of one forward call.
struct PatienceState {
  at::Tensor previousPrediction;
  at::Tensor streak;
};

// Which samples of `logits` [N, C] meet the rule, as a bool tensor [N]: softmax entropy at
// most the threshold, top probability at least it, top-two margin at least it, or the same
// prediction for at least `threshold` consecutive hooks (patience).
at::Tensor SamplesMeeting(const StopRule& rule, const at::Tensor& logits, PatienceState& patience);

// The decision at a hook: whether every sample meets the rule (the forward stops), whether some
// do, and which (`meeting`, defined when some but not all do).
struct StopDecision {
  bool all = false;
  bool any = false;
  at::Tensor meeting;
};

// SamplesMeeting's decision. On a float32 CPU output it is made in plain C++, in double
// precision, without the eight LibTorch operators SamplesMeeting runs (15-19 us at batch 1,
// as much as a small network's prefix): the same answer wherever the score is clear of the
// threshold. A score within 1e-4 of it, a non-finite logit, patience, or another dtype or
// device go through SamplesMeeting, whose float32 rounding then decides, as it always has.
StopDecision DecideStop(const StopRule& rule, const at::Tensor& logits, PatienceState& patience);

}  // namespace tee
