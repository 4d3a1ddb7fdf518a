// The sampler against the standard library: argmax against std::max_element on random
// values of awkward sizes with ties; greedy sampling is argmax after the penalties; a
// top-k draw stays within the k largest (a stable sort of every id) and repeats with its seed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "runtime/sampler.h"

namespace kvant {
namespace {

// Values with many ties (a few dozen levels) or none, and infinities where asked.
std::vector<float> random_values(size_t n, bool ties, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v(n);
  for (float& x : v) {
    const float u = std::uniform_real_distribution<float>(-8.0f, 8.0f)(rng);
    x = ties ? std::round(u * 2.0f) : u;
  }
  return v;
}

const size_t kSizes[] = {1, 2, 7, 8, 9, 15, 17, 100, 1023, 32000, 151936};

TEST(Sampler, ArgmaxIsTheFirstLargest) {
  for (size_t n : kSizes)
    for (bool ties : {false, true}) {
      auto v = random_values(n, ties, static_cast<uint32_t>(n));
      const auto want = [&] { return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin()); };
      EXPECT_EQ(argmax(v), want()) << n << " values, ties " << ties;
      v.back() = 100.0f;  // in the tail past the last whole group of eight
      EXPECT_EQ(argmax(v), want()) << n;
      v.front() = 100.0f;  // a tie with the last: the first wins
      EXPECT_EQ(argmax(v), 0) << n;
    }
  const std::vector<float> all_low(13, -INFINITY);
  EXPECT_EQ(argmax(all_low), 0);
  std::vector<float> with_nan = {1.0f, NAN, 3.0f, NAN, 2.0f};
  EXPECT_EQ(argmax(with_nan), 2);  // NaN never wins
  with_nan[0] = NAN;
  EXPECT_EQ(argmax(with_nan), 2);
  const std::vector<float> only_nan(9, NAN);
  EXPECT_EQ(argmax(only_nan), 0);
  EXPECT_EQ(argmax(std::vector<float>(17, 5.0f)), 0);
}

TEST(Sampler, GreedyIsArgmaxAfterPenalties) {
  SamplerOptions o;
  o.temperature = 0.0f;
  Sampler greedy(o);
  auto v = random_values(32000, false, 5);
  const int32_t best = argmax(v);
  EXPECT_EQ(greedy.sample(v, {}), best);
  o.presence_penalty = 1000.0f;  // the best token was just seen: the next one wins
  Sampler penalized(o);
  const std::vector<int32_t> history = {best};
  auto without = v;
  without[static_cast<size_t>(best)] = -INFINITY;
  EXPECT_EQ(penalized.sample(v, history), argmax(without));
  v[7] = NAN;  // a NaN logit is never drawn
  v[9] = 1e6f;
  EXPECT_EQ(greedy.sample(v, {}), 9);
  // Only the first is the argmax alone (kvant_generate's greedy path).
  EXPECT_TRUE(greedy.is_argmax());
  EXPECT_FALSE(penalized.is_argmax());
  o.penalty_last_n = 0;  // penalties over no tokens
  EXPECT_TRUE(Sampler(o).is_argmax());
  o.temperature = 0.7f;
  EXPECT_FALSE(Sampler(o).is_argmax());
}

TEST(Sampler, DrawsOnlyFromTheTopK) {
  SamplerOptions o;
  o.temperature = 1.5f;
  o.top_k = 5;
  o.top_p = 1.0f;
  o.min_p = 0.0f;
  o.seed = 11;
  Sampler s(o);
  const auto v = random_values(32000, false, 9);
  std::vector<int32_t> top(v.size());
  std::iota(top.begin(), top.end(), 0);
  std::stable_sort(top.begin(), top.end(), [&](int32_t a, int32_t b) { return v[size_t(a)] > v[size_t(b)]; });
  top.resize(5);
  std::vector<int> seen(5, 0);
  for (int i = 0; i < 2000; ++i) {
    const int32_t t = s.sample(v, {});
    const auto at = std::find(top.begin(), top.end(), t);
    ASSERT_NE(at, top.end()) << "token " << t << " is outside the top 5";
    ++seen[static_cast<size_t>(at - top.begin())];
  }
  for (int c : seen) EXPECT_GT(c, 0);  // at this temperature each of the five comes up
  Sampler again(o);  // same seed, same tokens
  Sampler first(o);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(again.sample(v, {}), first.sample(v, {}));
}

}  // namespace
}  // namespace kvant
