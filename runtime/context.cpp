#include "runtime/context.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "runtime/models/models.h"
#include "runtime/sampler.h"
#if KVANT_HAVE_CUDA
#include "runtime/cuda_backend.h"
#else
namespace kvant {
// Built without CUDA no context has one; the empty definition completes the type that
// Context's unique_ptr member names (clang requires it where the member is destroyed).
class CudaExecutor {};
}  // namespace kvant
#endif

namespace kvant {

Context::Context() = default;
Context::~Context() = default;

Result<std::unique_ptr<Context>> Context::create(std::shared_ptr<const Model> model, const ContextOptions& options) {
  std::unique_ptr<Context> ctx(new Context());
  const ModelConfig& c = model->config();
  ctx->options_ = options;
  ContextOptions& o = ctx->options_;
  if (o.n_ctx <= 0) o.n_ctx = std::min<int64_t>(c.max_seq_len, 4096);
  if (o.n_ctx > (int64_t{1} << 24))
    return Status::error(ErrorCode::invalid_argument, "context size {} is larger than 2^24 positions", o.n_ctx);
  if (o.n_seq <= 0) return Status::error(ErrorCode::invalid_argument, "n_seq must be at least 1");
  if (o.n_batch <= 0) o.n_batch = 256;
  if (o.threads <= 0) o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (o.kv_type == KvType::q4 && c.head_dim % 2 != 0)
    return Status::error(ErrorCode::unsupported, "q4 KV needs an even head dimension");
  KvLayout layout{o.kv_type, c.n_layers, c.n_kv_heads, c.head_dim, kPageTokens};
  const int64_t pages_per_seq = (o.n_ctx + kPageTokens - 1) / kPageTokens;
  const int64_t n_pages = pages_per_seq * o.n_seq;
  if (n_pages > UINT32_MAX)
    return Status::error(ErrorCode::invalid_argument, "context of {} × {} positions is too large", o.n_seq, o.n_ctx);
  if (o.device == Device::cuda) {
#if KVANT_HAVE_CUDA
    std::shared_ptr<const CudaWeights> weights = o.cuda_weights;
    if (!weights) {
      KVANT_ASSIGN_OR_RETURN(weights, CudaWeights::upload(*model, o.gpu_layers, false));
    }
    ctx->gpu_layers_ = weights->gpu_layers();
    KVANT_ASSIGN_OR_RETURN(ctx->kv_, KvCache::create(layout, static_cast<uint32_t>(n_pages),
                                                     static_cast<uint32_t>(ctx->gpu_layers_)));
    KVANT_ASSIGN_OR_RETURN(ctx->cuda_, CudaExecutor::create(*model, weights, layout, static_cast<uint32_t>(n_pages),
                                                            o.n_ctx, o.n_seq, std::max<int64_t>(o.n_batch, o.n_seq)));
    ctx->kv_->add_device_pool(ctx->cuda_->device_pool());
#else
    return Status::error(ErrorCode::unsupported, "this kvant was built without CUDA (nvcc was not found)");
#endif
  } else {
    KVANT_ASSIGN_OR_RETURN(ctx->kv_, KvCache::create(layout, static_cast<uint32_t>(n_pages)));
  }
  ctx->executor_ = std::make_unique<CpuExecutor>(*model, ctx->kv_->host_layout(), o.threads,
                                                 static_cast<uint32_t>(ctx->gpu_layers_));
  ctx->model_ = std::move(model);
  return ctx;
}

Result<SeqId> Context::new_sequence() { return kv_->create_sequence(); }
void Context::free_sequence(SeqId seq) { kv_->release_sequence(seq); }

std::span<const float> Context::logits(int64_t row) const {
  const int64_t v = model_->config().vocab_size;
  return std::span<const float>(logits_).subspan(static_cast<size_t>(row * v), static_cast<size_t>(v));
}

Status Context::check_tokens(std::span<const int32_t> tokens) const {
  const auto vocab = static_cast<int32_t>(model_->config().vocab_size);
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      return Status::error(ErrorCode::invalid_argument, "token id {} at index {} is outside the vocabulary (0..{})",
                           tokens[i], i, vocab - 1);
  return Status::ok();
}

const Plan& Context::plan_for(int64_t n_tokens, int64_t n_outputs) {
  for (const Plan& p : plans_)
    if (p.options.n_tokens == n_tokens && p.options.n_outputs == n_outputs) return p;
  if (plans_.size() >= 8) plans_.erase(plans_.begin());
  PlanOptions po;
  po.n_tokens = n_tokens;
  po.n_outputs = n_outputs;
  po.fuse = options_.fuse;
  po.gpu_layers = gpu_layers_;
  po.n_layers = static_cast<int>(model_->config().n_layers);
  plans_.push_back(make_plan(build_graph(*model_), po));
  return plans_.back();
}

// Room for n more positions: refuse, or shift the sequence (keep its first n_keep
// tokens and the latest half of the rest, and recompute them).
Status Context::make_room(SeqId seq, int64_t n) {
  const int64_t len = kv_->length(seq);
  if (len + n <= options_.n_ctx) return Status::ok();
  if (options_.overflow == ContextOverflow::error || n > options_.n_ctx / 2)
    return Status::error(ErrorCode::context_full,
                         "context is full: {} tokens do not fit after {} (context size {})", n, len, options_.n_ctx);
  const std::vector<int32_t> old = kv_->tokens(seq);
  const int64_t keep_head = std::min(options_.n_keep, len);
  const int64_t keep_tail = (options_.n_ctx - keep_head) / 2 - n;
  std::vector<int32_t> kept(old.begin(), old.begin() + keep_head);
  if (keep_tail > 0) kept.insert(kept.end(), old.end() - std::min<int64_t>(keep_tail, len - keep_head), old.end());
  kv_->truncate(seq, 0);
  for (size_t i = 0; i < kept.size(); i += static_cast<size_t>(options_.n_batch)) {
    const auto chunk = std::span<const int32_t>(kept).subspan(i, std::min<size_t>(static_cast<size_t>(options_.n_batch), kept.size() - i));
    std::vector<SeqId> owners(chunk.size(), seq);
    KVANT_TRY(run_batch(owners, chunk, false));
  }
  return Status::ok();
}

Status Context::eval(SeqId seq, std::span<const int32_t> tokens, bool all_logits, bool reuse_prefix) {
  if (!kv_->has_sequence(seq)) return Status::error(ErrorCode::invalid_argument, "unknown sequence {}", seq);
  if (tokens.empty()) return Status::error(ErrorCode::invalid_argument, "nothing to evaluate: no tokens");
  KVANT_TRY(check_tokens(tokens));
  if (reuse_prefix && kv_->length(seq) == 0 && !all_logits) {
    const int64_t reused = kv_->attach_prefix(seq, tokens);
    stats_.tokens_reused += reused;
    tokens = tokens.subspan(static_cast<size_t>(reused));
  }
  KVANT_TRY(make_room(seq, static_cast<int64_t>(tokens.size())));
  std::vector<float> all;
  const int64_t vocab = model_->config().vocab_size;
  for (size_t i = 0; i < tokens.size(); i += static_cast<size_t>(options_.n_batch)) {
    const auto chunk = tokens.subspan(i, std::min<size_t>(static_cast<size_t>(options_.n_batch), tokens.size() - i));
    const bool last = i + chunk.size() == tokens.size();
    std::vector<SeqId> owners(chunk.size(), seq);
    KVANT_TRY(run_batch(owners, chunk, all_logits));
    if (all_logits) all.insert(all.end(), logits_.begin(), logits_.begin() + static_cast<long>(chunk.size()) * vocab);
    else if (!last) n_logit_rows_ = 0;
  }
  if (all_logits) {
    logits_ = std::move(all);
    n_logit_rows_ = static_cast<int64_t>(tokens.size());
  }
  return Status::ok();
}

Status Context::eval_step(std::span<const SeqId> seqs, std::span<const int32_t> tokens) {
  if (seqs.size() != tokens.size() || seqs.empty())
    return Status::error(ErrorCode::invalid_argument, "eval_step needs one token per sequence");
  KVANT_TRY(check_tokens(tokens));
  for (SeqId s : seqs) {
    if (!kv_->has_sequence(s)) return Status::error(ErrorCode::invalid_argument, "unknown sequence {}", s);
    KVANT_TRY(make_room(s, 1));
  }
  return run_batch(seqs, tokens, true);
}

Status Context::run_batch(std::span<const SeqId> seq_of_token, std::span<const int32_t> tokens, bool all_logits) {
  const auto start = std::chrono::steady_clock::now();
  const auto n = static_cast<int64_t>(tokens.size());
  // Positions, page tables and slots for each token; distinct sequences get a slot each.
  std::vector<SeqId> seqs;
  std::vector<int32_t> positions(tokens.size()), slots(tokens.size());
  std::vector<int64_t> next_pos;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const SeqId s = seq_of_token[i];
    auto it = std::find(seqs.begin(), seqs.end(), s);
    if (it == seqs.end()) {
      seqs.push_back(s);
      next_pos.push_back(kv_->length(s));
      it = seqs.end() - 1;
    }
    const auto slot = static_cast<size_t>(it - seqs.begin());
    slots[i] = static_cast<int32_t>(slot);
    positions[i] = static_cast<int32_t>(next_pos[slot]++);
  }
  for (size_t s = 0; s < seqs.size(); ++s) KVANT_TRY(kv_->reserve(seqs[s], next_pos[s] - kv_->length(seqs[s])));
  BatchInfo batch;
  batch.tokens = tokens;
  batch.positions = positions;
  batch.slot = slots;
  for (SeqId s : seqs) batch.page_tables.push_back(kv_->page_table(s));
  // Logits for every token, or for the last token of each sequence.
  std::vector<int32_t> out_rows;
  if (all_logits) {
    for (int32_t i = 0; i < n; ++i) out_rows.push_back(i);
  } else {
    for (size_t s = 0; s < seqs.size(); ++s)
      for (int64_t i = n - 1; i >= 0; --i)
        if (seq_of_token[static_cast<size_t>(i)] == seqs[s]) {
          out_rows.push_back(static_cast<int32_t>(i));
          break;
        }
  }
  batch.output_rows = out_rows;
  const Plan& plan = plan_for(n, static_cast<int64_t>(out_rows.size()));
  KVANT_TRY(execute(plan, batch, seqs));
  for (size_t s = 0; s < seqs.size(); ++s) {
    std::vector<int32_t> own;
    for (size_t i = 0; i < tokens.size(); ++i)
      if (seq_of_token[i] == seqs[s]) own.push_back(tokens[i]);
    commit(seqs[s], own);
  }
  n_logit_rows_ = static_cast<int64_t>(out_rows.size());
  stats_.tokens_evaluated += n;
  ++stats_.evaluations;
  stats_.eval_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return Status::ok();
}

void Context::commit(SeqId seq, std::span<const int32_t> tokens) {
  kv_->commit(seq, tokens);
  if (const uint32_t window = model_->config().sliding_window) kv_->drop_before(seq, kv_->length(seq) - window);
}

Status Context::greedy(SeqId seq, int32_t token, int64_t max_evals, const std::function<GreedyNext(int32_t)>& next,
                       int64_t* evaluated) {
  *evaluated = 0;
  if (!kv_->has_sequence(seq)) return Status::error(ErrorCode::invalid_argument, "unknown sequence {}", seq);
  KVANT_TRY(check_tokens(std::span<const int32_t>(&token, 1)));
  // Asks about the argmax of the last evaluation's logits: false to stop; else it is the
  // next token to evaluate (the last one, when evaluate_and_stop).
  auto ask = [&] {
    const int32_t t = argmax(logits(0));
    const GreedyNext what = next(t);
    if (what == GreedyNext::stop) return false;
    token = t;
    if (what == GreedyNext::evaluate_and_stop) max_evals = *evaluated + 1;
    return true;
  };
#if KVANT_HAVE_CUDA
  // Two positions at least, so that the device path is worth its set-up. It stops at the
  // end of the context; eval goes on from there (and shifts the context if asked to).
  if (cuda_ && max_evals > 1 && kv_->length(seq) + 2 <= options_.n_ctx) {
    const Plan& plan = plan_for(1, 1);
    if (cuda_->can_queue_greedy(plan)) {
      bool finished = false;
      KVANT_TRY(greedy_on_gpu(plan, seq, token, max_evals, next, evaluated, &finished));
      if (finished || !ask()) return Status::ok();
    }
  }
#endif
  while (*evaluated < max_evals) {
    KVANT_TRY(eval(seq, std::span<const int32_t>(&token, 1)));
    if (++*evaluated == max_evals || !ask()) break;
  }
  return Status::ok();
}

#if KVANT_HAVE_CUDA
// Context::greedy with each step queued before the host reads the token of the one
// before; *finished unless it stopped at the end of the context (or of the page pool).
Status Context::greedy_on_gpu(const Plan& plan, SeqId seq, int32_t token, int64_t max_evals,
                              const std::function<GreedyNext(int32_t)>& next, int64_t* evaluated, bool* finished) {
  const auto start_time = std::chrono::steady_clock::now();
  const int64_t start = kv_->length(seq);
  int64_t limit = std::min(max_evals, options_.n_ctx - start);  // evaluations at most
  KVANT_TRY(kv_->reserve(seq, 1));
  const int32_t position = static_cast<int32_t>(start), zero = 0;
  BatchInfo batch;  // the first step's; the device writes the later steps' token and position
  batch.tokens = std::span<const int32_t>(&token, 1);
  batch.positions = std::span<const int32_t>(&position, 1);
  batch.slot = std::span<const int32_t>(&zero, 1);
  batch.output_rows = std::span<const int32_t>(&zero, 1);
  KVANT_TRY(cuda_->greedy_begin(plan, batch, kv_->page_ids(seq)));
  size_t pages_sent = kv_->page_ids(seq).size();
  // Queues the step that evaluates position start + step, its page in the table first.
  auto queue = [&](int64_t step) -> Status {
    KVANT_TRY(kv_->reserve(seq, start + step + 1 - kv_->length(seq)));
    const auto& ids = kv_->page_ids(seq);
    for (; pages_sent < ids.size(); ++pages_sent) KVANT_TRY(cuda_->greedy_page(pages_sent, ids[pages_sent]));
    return cuda_->greedy_step(plan);
  };
  Status status = queue(0);
  int32_t current = token;  // what step *evaluated evaluates
  while (status) {
    // The step after this one, before this one's token is read: it evaluates this one's
    // argmax, which the device wrote into its input. A pool without a free page ends
    // the queue here.
    if (*evaluated + 1 < limit) {
      const Status queued = queue(*evaluated + 1);
      if (queued.code() == ErrorCode::context_full) limit = *evaluated + 1;
      else if (!queued) {
        status = queued;
        break;
      }
    }
    const Result<int32_t> t = cuda_->greedy_token(start + *evaluated);
    if (!t) {
      status = t.status();
      break;
    }
    commit(seq, std::span<const int32_t>(&current, 1));
    if (++*evaluated == limit) {
      *finished = limit == max_evals;
      break;
    }
    const GreedyNext what = next(*t);
    if (what == GreedyNext::stop) {  // the step queued for *t is discarded
      *finished = true;
      break;
    }
    current = *t;
    if (what == GreedyNext::evaluate_and_stop) limit = max_evals = *evaluated + 1;
  }
  // A discarded step may still run; then the logits of the last step kept.
  const Status synced = cuda_->synchronize();
  if (status) status = synced;
  if (*evaluated > 0) {
    logits_.resize(static_cast<size_t>(model_->config().vocab_size));
    const Status fetched = cuda_->greedy_logits(start + *evaluated - 1, logits_.data());
    n_logit_rows_ = fetched ? 1 : 0;
    if (status) status = fetched;
  }
  stats_.tokens_evaluated += *evaluated;
  stats_.evaluations += *evaluated;
  stats_.eval_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  return status;
}
#endif

// Runs the plan's nodes device by device (a split model goes GPU, then CPU), moving the
// activations that cross each boundary, and fetches the logits.
Status Context::execute(const Plan& plan, const BatchInfo& batch, std::span<const SeqId> seqs) {
  const auto& nodes = plan.graph.nodes();
  const Node& out = nodes[static_cast<size_t>(plan.graph.output.node)];
  const int64_t logit_floats = plan.rows(out) * out.width;
  logits_.resize(static_cast<size_t>(logit_floats));
  if (!cuda_) {
    KVANT_TRY(executor_->run(plan, batch, 0, nodes.size()));
    std::memcpy(logits_.data(), executor_->arena() + out.offset[0], static_cast<size_t>(logit_floats) * 4);
    return Status::ok();
  }
#if KVANT_HAVE_CUDA
  std::vector<const std::vector<uint32_t>*> page_ids;
  for (SeqId s : seqs) page_ids.push_back(&kv_->page_ids(s));
  KVANT_TRY(cuda_->prepare(plan));
  KVANT_TRY(executor_->prepare(plan));
  size_t begin = 0;
  while (begin < nodes.size()) {
    const bool gpu = nodes[begin].on_gpu;
    size_t end = begin;
    while (end < nodes.size() && nodes[end].on_gpu == gpu) ++end;
    if (begin > 0) {  // activations cross from the other device
      for (const auto& [ref, bytes] : plan.live_across(begin)) {
        const int64_t off = nodes[static_cast<size_t>(ref.node)].offset[ref.port];
        if (gpu) cudaMemcpyAsync(cuda_->arena() + off, executor_->arena() + off, static_cast<size_t>(bytes),
                                 cudaMemcpyHostToDevice, cuda_->stream());
        else cudaMemcpyAsync(executor_->arena() + off, cuda_->arena() + off, static_cast<size_t>(bytes),
                             cudaMemcpyDeviceToHost, cuda_->stream());
      }
      KVANT_TRY(cuda_->synchronize());
    }
    if (gpu) KVANT_TRY(cuda_->run(plan, batch, page_ids, begin, end));
    else KVANT_TRY(executor_->run(plan, batch, begin, end));
    begin = end;
  }
  if (out.on_gpu) {
    KVANT_TRY(cuda_->fetch(out.offset[0], logits_.data(), static_cast<size_t>(logit_floats)));
  } else {
    std::memcpy(logits_.data(), executor_->arena() + out.offset[0], static_cast<size_t>(logit_floats) * 4);
  }
  return Status::ok();
#else
  (void)seqs;
  return Status::error(ErrorCode::internal, "CUDA executor without CUDA");
#endif
}

}  // namespace kvant
