#include "hooks/stop_rules.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

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

namespace {

// Per row, whether it meets the rule, or nothing where SamplesMeeting must decide.
bool QuickMeeting(const StopRule& rule, const at::Tensor& output, std::vector<uint8_t>& rows) {
  if (rule.kind == StopRule::Kind::kPatience || output.scalar_type() != at::kFloat || !output.device().is_cpu() ||
      output.layout() != at::kStrided || (output.dim() != 1 && output.dim() != 2)) {
    return false;
  }
  at::Tensor logits = (output.dim() == 1 ? output.unsqueeze(0) : output).contiguous();
  int64_t n = logits.size(0), classes = logits.size(1);
  if (classes < (rule.kind == StopRule::Kind::kMargin ? 2 : 1)) return false;
  const float* data = logits.data_ptr<float>();
  double margin = 1e-4 * (1 + std::fabs(rule.threshold));
  rows.assign(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    const float* row = data + i * classes;
    double top = -std::numeric_limits<double>::infinity(), second = top;
    for (int64_t c = 0; c < classes; ++c) {
      double x = row[c];
      if (!std::isfinite(x)) return false;
      if (x > top) {
        second = top;
        top = x;
      } else if (x > second) {
        second = x;
      }
    }
    double sum = 0;
    for (int64_t c = 0; c < classes; ++c) sum += std::exp(row[c] - top);
    double score;
    bool meets;
    if (rule.kind == StopRule::Kind::kEntropy) {
      double logSum = std::log(sum), entropy = 0;
      for (int64_t c = 0; c < classes; ++c) {
        double logP = row[c] - top - logSum;
        entropy -= std::exp(logP) * logP;
      }
      score = entropy;
      meets = entropy <= rule.threshold;
    } else {
      score = rule.kind == StopRule::Kind::kMaxProbability ? 1 / sum : (1 - std::exp(second - top)) / sum;
      meets = score >= rule.threshold;
    }
    if (std::fabs(score - rule.threshold) <= margin) return false;
    rows[i] = meets;
  }
  return true;
}

}  // namespace

StopDecision DecideStop(const StopRule& rule, const at::Tensor& logits, PatienceState& patience) {
  StopDecision decision;
  std::vector<uint8_t> rows;
  if (QuickMeeting(rule, logits, rows)) {
    auto meets = std::count(rows.begin(), rows.end(), 1);
    decision.all = meets == static_cast<int64_t>(rows.size());
    decision.any = meets > 0;
    if (decision.any && !decision.all) {
      decision.meeting = at::empty({static_cast<int64_t>(rows.size())}, at::kBool);
      std::copy(rows.begin(), rows.end(), decision.meeting.data_ptr<bool>());
    }
    return decision;
  }
  at::Tensor meeting = SamplesMeeting(rule, logits, patience);
  decision.all = meeting.all().item<bool>();
  decision.any = decision.all || meeting.any().item<bool>();
  if (decision.any && !decision.all) decision.meeting = meeting;
  return decision;
}

}  // namespace tee
