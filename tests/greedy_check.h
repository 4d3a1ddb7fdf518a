// Context::greedy against eval and kvant::argmax, shared by the CPU suite (engine_test)
// and the GPU suite (cuda_engine_test, where greedy queues its steps on the device).
#pragma once

#include <span>
#include <string>
#include <vector>

#include "runtime/context.h"

namespace kvant::test {

// The prompt the checks below decode after: 20 tokens spread over the vocabulary.
std::vector<int32_t> greedy_prompt(int64_t vocab);

// The loop greedy replaces, on a new sequence of ctx (left for the caller to free):
// evaluates the prompt, then `token`, then the argmax of each evaluation's logits, for
// `steps` evaluations.
struct EvalLoop {
  SeqId seq = -1;
  std::vector<int32_t> argmax;             // of step i's logits
  std::vector<std::vector<float>> logits;  // of step i
};
EvalLoop eval_then_argmax(Context& ctx, std::span<const int32_t> prompt, int32_t token, int64_t steps);

// What greedy decoding gives on a new sequence of ctx (freed after): evaluates the prompt,
// then Context::greedy from `token` for at most max_evals evaluations, every token it
// asks about kept (max_evals - 1 of them) and evaluated.
std::vector<int32_t> greedy_tokens(Context& ctx, std::span<const int32_t> prompt, int32_t token, int64_t max_evals);

// On a model with a vocabulary and context of at least 64: the tokens greedy asks
// about, the sequence it leaves (length, tokens, KV rows: checked by evaluating one
// more token) and its final logits equal those of the eval-then-argmax loop, when it
// runs to max_evals, when it stops before a token (the step a GPU queued past the stop
// is discarded), when it stops after one, across a KV page boundary, and at the end
// of the context (where it reports context_full as eval does).
void check_greedy_against_eval(const std::string& model_path, ContextOptions options);

}  // namespace kvant::test
