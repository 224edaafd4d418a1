#include "hooks/stop_rules.h"

#include <c10/core/GradMode.h>

#include <stdexcept>

namespace tee {

StopRule::Kind ParseStopRuleKind(const std::string& name) {
  if (name == "entropy") return StopRule::Kind::kEntropy;
  if (name == "maxProbability") return StopRule::Kind::kMaxProbability;
  if (name == "margin") return StopRule::Kind::kMargin;
  if (name == "patience") return StopRule::Kind::kPatience;
  throw std::invalid_argument("unknown stop rule '" + name + "' (expected entropy, maxProbability, margin or patience)");
}

at::Tensor SamplesMeeting(const StopRule& rule, const at::Tensor& output, PatienceState& patience) {
  c10::NoGradGuard noGrad;
  at::Tensor logits = output.dim() == 1 ? output.unsqueeze(0) : output;
  if (logits.dim() != 2) throw std::invalid_argument("a stop rule needs exit outputs of shape [N, classes]");
  switch (rule.kind) {
    case StopRule::Kind::kEntropy: {
      at::Tensor logProbabilities = logits.log_softmax(1);
      at::Tensor entropy = -(logProbabilities.exp() * logProbabilities).sum(1);
      return entropy.le(rule.threshold);
    }
    case StopRule::Kind::kMaxProbability:
      return std::get<0>(logits.softmax(1).max(1)).ge(rule.threshold);
    case StopRule::Kind::kMargin: {
      at::Tensor top = std::get<0>(logits.softmax(1).topk(2, 1));
      return (top.select(1, 0) - top.select(1, 1)).ge(rule.threshold);
    }
    case StopRule::Kind::kPatience: {
      at::Tensor prediction = logits.argmax(1);
      if (!patience.previousPrediction.defined()) {
        patience.streak = at::ones_like(prediction);
      } else {
        at::Tensor same = prediction.eq(patience.previousPrediction);
        patience.streak = at::where(same, patience.streak + 1, at::ones_like(prediction));
      }
      patience.previousPrediction = prediction;
      return patience.streak.ge(rule.threshold);
    }
  }
  throw std::invalid_argument("unknown stop rule");
}

}  // namespace tee
