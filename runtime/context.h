// A model being run: the KV cache of its sequences, the planned graphs, and the
// evaluation entry points (prefill in chunks, one-token decode, several sequences in
// one batch). The public C API (include/kvant.h) wraps this.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "runtime/cpu_executor.h"
#include "runtime/kv_cache.h"
#include "runtime/model.h"
#include "runtime/planner.h"

namespace kvant {

enum class ContextOverflow {
  error,  // refuse with context_full
  shift,  // keep the first `n_keep` tokens and the most recent half of the rest, recompute them
};

class CudaWeights;
class CudaExecutor;

enum class Device { cpu, cuda };

struct ContextOptions {
  int64_t n_ctx = 0;      // positions per sequence (0: the model's max_seq_len, at most 4096)
  int32_t n_seq = 1;      // sequences held at once (the pool has n_seq × n_ctx positions)
  KvType kv_type = KvType::f16;
  int threads = 0;        // 0: every core
  int64_t n_batch = 256;  // prompt tokens per evaluation chunk
  bool fuse = true;       // planner fusions (off only in tests)
  ContextOverflow overflow = ContextOverflow::error;
  int64_t n_keep = 0;     // tokens kept at the start when shifting
  Device device = Device::cpu;
  int gpu_layers = -1;    // with Device::cuda: layers on the GPU (-1 all), the rest on the CPU
  // Weights already on the GPU (shared by the contexts of one model); uploaded when null.
  std::shared_ptr<const CudaWeights> cuda_weights;
};

// What Context::greedy does with a token it chose.
enum class GreedyNext {
  evaluate,           // evaluate it and go on
  evaluate_and_stop,  // evaluate it, then stop
  stop,               // stop without evaluating it
};

struct ContextStats {
  int64_t tokens_evaluated = 0;  // tokens run through the model
  int64_t tokens_reused = 0;     // prompt tokens taken from the prefix cache
  int64_t evaluations = 0;
  double eval_seconds = 0;
};

class Context {
 public:
  static Result<std::unique_ptr<Context>> create(std::shared_ptr<const Model> model, const ContextOptions& options);

  const Model& model() const { return *model_; }
  const ContextOptions& options() const { return options_; }
  KvCache& kv_cache() { return *kv_; }

  Result<SeqId> new_sequence();
  void free_sequence(SeqId seq);
  int64_t length(SeqId seq) const { return kv_->length(seq); }

  // Appends `tokens` to the sequence and runs them through the model in chunks of
  // n_batch. Afterwards logits(0) holds the last token's logits, or logits(i) those of
  // every token i when all_logits. With reuse_prefix on an empty sequence, a cached
  // prefix of `tokens` is attached first and only the rest is computed.
  Status eval(SeqId seq, std::span<const int32_t> tokens, bool all_logits = false, bool reuse_prefix = false);
  // One token for each of several sequences, as one batch; logits(i) is sequence i's.
  Status eval_step(std::span<const SeqId> seqs, std::span<const int32_t> tokens);

  // Greedy decoding of one sequence: evaluates `token`, then asks next(t) about t, the
  // argmax of each evaluation's logits (kvant::argmax), until it says stop or max_evals
  // tokens are evaluated (the last one's argmax is not asked about). *evaluated counts
  // the evaluations, also on error; afterwards logits(0) holds the last evaluated token's
  // logits, as after eval. With the whole model on the GPU the argmax is taken there and
  // each step is queued before the host has read the token of the one before
  // (CudaExecutor::greedy_step), so the host's work between tokens overlaps the GPU's;
  // a step queued past a stop is discarded (its KV position is not committed). Elsewhere,
  // and from the last position of the context on, it is eval and argmax.
  Status greedy(SeqId seq, int32_t token, int64_t max_evals, const std::function<GreedyNext(int32_t)>& next,
                int64_t* evaluated);

  std::span<const float> logits(int64_t row) const;
  int64_t n_logit_rows() const { return n_logit_rows_; }
  const ContextStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  Context();
 public:
  ~Context();

 private:
  Status check_tokens(std::span<const int32_t> tokens) const;
  Status make_room(SeqId seq, int64_t n);
  // Runs one batch: tokens of (possibly) several sequences.
  Status run_batch(std::span<const SeqId> seq_of_token, std::span<const int32_t> tokens, bool all_logits);
  const Plan& plan_for(int64_t n_tokens, int64_t n_outputs);

  std::shared_ptr<const Model> model_;
  ContextOptions options_;
  std::unique_ptr<KvCache> kv_;
  std::unique_ptr<CpuExecutor> executor_;
  std::unique_ptr<CudaExecutor> cuda_;
  int gpu_layers_ = 0;
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  Status execute(const Plan& plan, const BatchInfo& batch, std::span<const SeqId> seqs);
  Status greedy_on_gpu(const Plan& plan, SeqId seq, int32_t token, int64_t max_evals,
                       const std::function<GreedyNext(int32_t)>& next, int64_t* evaluated, bool* finished);
  // After positions of `seq` are written: records their tokens, then frees what a sliding
  // window will never read again.
  void commit(SeqId seq, std::span<const int32_t> tokens);
  std::vector<Plan> plans_;  // small cache keyed by (n_tokens, n_outputs)
  std::vector<float> logits_;
  int64_t n_logit_rows_ = 0;
  ContextStats stats_;
};

}  // namespace kvant
