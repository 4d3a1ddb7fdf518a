#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

namespace kvant {

int32_t argmax(std::span<const float> values) {
  constexpr size_t kBlock = 256, kLanes = 8;
  const size_t n = values.size();
  float best = -INFINITY;
  size_t best_block = 0;
  for (size_t start = 0; start < n; start += kBlock) {
    const size_t end = std::min(n, start + kBlock);
    float lane_max[kLanes];
    for (float& m : lane_max) m = -INFINITY;
    size_t i = start;
    for (; i + kLanes <= end; i += kLanes)
      for (size_t j = 0; j < kLanes; ++j) lane_max[j] = values[i + j] > lane_max[j] ? values[i + j] : lane_max[j];
    float m = -INFINITY;
    for (float l : lane_max) m = l > m ? l : m;
    for (; i < end; ++i) m = values[i] > m ? values[i] : m;
    if (m > best) {
      best = m;
      best_block = start;
    }
  }
  for (size_t i = best_block; i < n; ++i)
    if (values[i] == best) return static_cast<int32_t>(i);
  return 0;
}

Sampler::Sampler(const SamplerOptions& options) : options_(options), rng_(options.seed) {}

bool Sampler::penalizes() const {
  const SamplerOptions& o = options_;
  return o.penalty_last_n > 0 && (o.repetition_penalty != 1.0f || o.frequency_penalty != 0.0f || o.presence_penalty != 0.0f);
}

bool Sampler::is_argmax() const { return options_.temperature <= 0.0f && !penalizes(); }

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const SamplerOptions& o = options_;
  const auto n = static_cast<int32_t>(logits.size());
  work_.assign(logits.begin(), logits.end());

  // Penalties over the last penalty_last_n tokens.
  if (penalizes()) {
    const auto last_n = static_cast<size_t>(o.penalty_last_n);  // > 0 here
    const size_t from = history.size() > last_n ? history.size() - last_n : 0;
    std::unordered_map<int32_t, int> counts;
    for (size_t i = from; i < history.size(); ++i)
      if (history[i] >= 0 && history[i] < n) ++counts[history[i]];
    for (const auto& [id, count] : counts) {
      float& l = work_[static_cast<size_t>(id)];
      if (o.repetition_penalty != 1.0f) l = l > 0 ? l / o.repetition_penalty : l * o.repetition_penalty;
      l -= static_cast<float>(count) * o.frequency_penalty + o.presence_penalty;
    }
  }
  if (o.temperature <= 0.0f) return argmax(work_);

  // Candidates sorted by logit (top-k first bounds the sort).
  ids_.resize(static_cast<size_t>(n));
  std::iota(ids_.begin(), ids_.end(), 0);
  const auto k = static_cast<size_t>(o.top_k > 0 ? std::min(o.top_k, n) : n);
  auto by_logit = [&](int32_t a, int32_t b) { return work_[static_cast<size_t>(a)] > work_[static_cast<size_t>(b)]; };
  std::partial_sort(ids_.begin(), ids_.begin() + static_cast<long>(k), ids_.end(), by_logit);
  ids_.resize(k);

  // Softmax at the temperature over the candidates.
  const float max_logit = work_[static_cast<size_t>(ids_[0])];
  std::vector<double> p(k);
  double sum = 0;
  for (size_t i = 0; i < k; ++i) {
    p[i] = std::exp((work_[static_cast<size_t>(ids_[i])] - max_logit) / o.temperature);
    sum += p[i];
  }
  for (auto& v : p) v /= sum;
  // top-p: the smallest prefix with mass >= top_p; min-p: drop p < min_p · p_max.
  size_t keep = k;
  if (o.top_p < 1.0f) {
    double mass = 0;
    for (size_t i = 0; i < k; ++i) {
      mass += p[i];
      if (mass >= o.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (o.min_p > 0.0f) {
    const double floor = o.min_p * p[0];
    size_t m = 1;
    while (m < keep && p[m] >= floor) ++m;
    keep = m;
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += p[i];
  std::uniform_real_distribution<double> uniform(0.0, kept);
  double r = uniform(rng_);
  for (size_t i = 0; i < keep; ++i) {
    r -= p[i];
    if (r <= 0) return ids_[i];
  }
  return ids_[keep - 1];
}

}  // namespace kvant
