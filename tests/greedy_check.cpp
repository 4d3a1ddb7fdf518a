#include "tests/greedy_check.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "runtime/sampler.h"

namespace kvant::test {

std::vector<int32_t> greedy_prompt(int64_t vocab) {
  std::vector<int32_t> prompt(20);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 37 + 11) % vocab);
  return prompt;
}

EvalLoop eval_then_argmax(Context& ctx, std::span<const int32_t> prompt, int32_t token, int64_t steps) {
  EvalLoop r;
  r.seq = *ctx.new_sequence();
  EXPECT_TRUE(ctx.eval(r.seq, prompt));
  for (int64_t i = 0; i < steps; ++i) {
    const Status s = ctx.eval(r.seq, std::span<const int32_t>(&token, 1));
    EXPECT_TRUE(s) << s.message();
    if (!s) break;
    r.logits.emplace_back(ctx.logits(0).begin(), ctx.logits(0).end());
    token = argmax(ctx.logits(0));
    r.argmax.push_back(token);
  }
  return r;
}

std::vector<int32_t> greedy_tokens(Context& ctx, std::span<const int32_t> prompt, int32_t token, int64_t max_evals) {
  std::vector<int32_t> out;
  const SeqId s = *ctx.new_sequence();
  EXPECT_TRUE(ctx.eval(s, prompt));
  int64_t evaluated = 0;
  const Status st = ctx.greedy(s, token, max_evals, [&](int32_t x) {
    out.push_back(x);
    return GreedyNext::evaluate;
  }, &evaluated);
  EXPECT_TRUE(st) << st.message();
  ctx.free_sequence(s);
  return out;
}

namespace {

double max_rel_diff(std::span<const float> got, std::span<const float> want) {
  EXPECT_EQ(got.size(), want.size());
  double m = 0, scale = 1e-30;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    m = std::max(m, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
  }
  return m / scale;
}

}  // namespace

void check_greedy_against_eval(const std::string& model_path, ContextOptions options) {
  auto model = Model::load(model_path);
  ASSERT_TRUE(model) << model.status().message();
  options.n_ctx = 96;  // three KV pages of 32 positions
  options.n_seq = 2;   // the reference and greedy's sequence
  if (options.threads == 0) options.threads = 2;
  auto created = Context::create(*model, options);
  ASSERT_TRUE(created) << created.status().message();
  Context& ctx = **created;
  const std::vector<int32_t> prompt = greedy_prompt(ctx.model().config().vocab_size);
  const int32_t first = 3, other = 5;

  struct Case {
    const char* name;
    int64_t max_evals;
    int64_t stop_at;  // the answer for the stop_at-th token asked (from 1); 0: never stop
    GreedyNext stop;
    int64_t want_evaluated;
  };
  // 20 prompt positions + 50 evaluations cross the pages at 32 and 64.
  const Case cases[] = {
      {"to max_evals", 50, 0, GreedyNext::evaluate, 50},
      {"stop before the 3rd", 50, 3, GreedyNext::stop, 3},
      {"stop after the 3rd", 50, 3, GreedyNext::evaluate_and_stop, 4},
      {"stop before the 1st", 50, 1, GreedyNext::stop, 1},
      {"one evaluation", 1, 0, GreedyNext::evaluate, 1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const EvalLoop ref = eval_then_argmax(ctx, prompt, first, c.want_evaluated);
    ASSERT_EQ(static_cast<int64_t>(ref.logits.size()), c.want_evaluated);
    const SeqId s = *ctx.new_sequence();
    ASSERT_TRUE(ctx.eval(s, prompt));
    std::vector<int32_t> asked;
    int64_t evaluated = -1;
    const Status st = ctx.greedy(s, first, c.max_evals, [&](int32_t t) {
      asked.push_back(t);
      return static_cast<int64_t>(asked.size()) == c.stop_at ? c.stop : GreedyNext::evaluate;
    }, &evaluated);
    ASSERT_TRUE(st) << st.message();
    EXPECT_EQ(evaluated, c.want_evaluated);
    // Every argmax but the last evaluation's is asked about, unless a stop came first.
    const int64_t want_asked = c.stop_at > 0 ? c.stop_at : c.want_evaluated - 1;
    ASSERT_EQ(static_cast<int64_t>(asked.size()), want_asked);
    for (size_t i = 0; i < asked.size(); ++i) EXPECT_EQ(asked[i], ref.argmax[i]) << "token " << i;
    std::vector<int32_t> want_tokens = prompt;
    want_tokens.push_back(first);
    want_tokens.insert(want_tokens.end(), ref.argmax.begin(), ref.argmax.begin() + (c.want_evaluated - 1));
    EXPECT_EQ(ctx.kv_cache().tokens(s), want_tokens);
    EXPECT_EQ(ctx.length(s), static_cast<int64_t>(want_tokens.size()));
    ASSERT_EQ(ctx.n_logit_rows(), 1);
    EXPECT_LT(max_rel_diff(ctx.logits(0), ref.logits.back()), 1e-5);
    // The KV rows: one more token (not the one a GPU may have queued past a stop) in both.
    ASSERT_TRUE(ctx.eval(ref.seq, std::span<const int32_t>(&other, 1)));
    const std::vector<float> want(ctx.logits(0).begin(), ctx.logits(0).end());
    ASSERT_TRUE(ctx.eval(s, std::span<const int32_t>(&other, 1)));
    EXPECT_LT(max_rel_diff(ctx.logits(0), want), 1e-5);
    ctx.free_sequence(ref.seq);
    ctx.free_sequence(s);
  }

  // The end of the context: as many evaluations as there are positions, then eval's
  // context_full.
  const int64_t room = options.n_ctx - static_cast<int64_t>(prompt.size());
  const EvalLoop ref = eval_then_argmax(ctx, prompt, first, room);
  ASSERT_EQ(static_cast<int64_t>(ref.logits.size()), room);
  const SeqId s = *ctx.new_sequence();
  ASSERT_TRUE(ctx.eval(s, prompt));
  int64_t evaluated = -1, asked = 0;
  const Status full = ctx.greedy(s, first, 1000, [&](int32_t t) {
    EXPECT_EQ(t, ref.argmax[static_cast<size_t>(asked)]) << "token " << asked;
    ++asked;
    return GreedyNext::evaluate;
  }, &evaluated);
  EXPECT_EQ(full.code(), ErrorCode::context_full) << full.message();
  EXPECT_EQ(evaluated, room);
  EXPECT_EQ(asked, room);  // the last position's argmax too: it would have been evaluated next
  EXPECT_EQ(ctx.length(s), options.n_ctx);
  EXPECT_LT(max_rel_diff(ctx.logits(0), ref.logits.back()), 1e-5);
}

}  // namespace kvant::test
