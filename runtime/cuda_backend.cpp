#include "runtime/cuda_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "runtime/cuda_trace.h"
#include "runtime/progress.h"

namespace kvant {

namespace {

Status cuda_error(cudaError_t e, std::string_view what) {
  return Status::error(ErrorCode::internal, "CUDA error in {}: {}", what, cudaGetErrorString(e));
}

#define KVANT_CUDA_TRY(call, what)                    \
  do {                                                \
    const cudaError_t kvant_cuda_e_ = (call);         \
    if (kvant_cuda_e_ != cudaSuccess) return cuda_error(kvant_cuda_e_, what); \
  } while (0)

uint64_t matrix_bytes(const cpu::WeightMatrix& w) {
  return *tensor_bytes(w.dtype, static_cast<uint64_t>(w.rows), static_cast<uint64_t>(w.cols));
}

}  // namespace

bool cuda_available(std::string* name) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return false;
  }
  if (name) {
    cudaDeviceProp p{};
    cudaGetDeviceProperties(&p, 0);
    *name = p.name;
  }
  return true;
}

// ---- weights ------------------------------------------------------------------------------

CudaWeights::~CudaWeights() {
  for (void* p : allocations_) cudaFree(p);
}

cuda::DeviceMatrix CudaWeights::matrix(const cpu::WeightMatrix& host) const {
  const auto it = device_of_.find(host.data);
  return {host.dtype, host.rows, host.cols, it == device_of_.end() ? nullptr : it->second};
}

const float* CudaWeights::vec(const float* host) const {
  if (!host) return nullptr;
  const auto it = device_of_.find(host);
  return it == device_of_.end() ? nullptr : reinterpret_cast<const float*>(it->second);
}

Result<std::shared_ptr<const CudaWeights>> CudaWeights::upload(const Model& model, int gpu_layers, bool progress) {
  if (!cuda_available()) return Status::error(ErrorCode::unsupported, "no CUDA GPU is available");
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  std::shared_ptr<CudaWeights> cw(new CudaWeights());
  cw->gpu_layers_ = std::clamp(gpu_layers < 0 ? static_cast<int>(c.n_layers) : gpu_layers, 0, static_cast<int>(c.n_layers));
  // What goes: (host bytes, size).
  std::vector<std::pair<const uint8_t*, uint64_t>> tensors;
  auto add_matrix = [&](const cpu::WeightMatrix& m) {
    if (m.data) tensors.push_back({m.data, matrix_bytes(m)});
  };
  auto add_vec = [&](const float* v, uint64_t n) {
    if (v) tensors.push_back({reinterpret_cast<const uint8_t*>(v), n * 4});
  };
  add_matrix(w.token_embd);
  add_matrix(w.pos_embd);
  for (int l = 0; l < cw->gpu_layers_; ++l) {
    const LayerWeights& L = w.layers[static_cast<size_t>(l)];
    for (const auto* m : {&L.attn_q, &L.attn_k, &L.attn_v, &L.attn_out, &L.ffn_gate, &L.ffn_up, &L.ffn_down}) add_matrix(*m);
    const uint64_t q_dim = uint64_t{c.n_heads} * c.head_dim, kv_dim = uint64_t{c.n_kv_heads} * c.head_dim;
    add_vec(L.attn_norm, c.dim);
    add_vec(L.attn_norm_bias, c.dim);
    add_vec(L.ffn_norm, c.dim);
    add_vec(L.ffn_norm_bias, c.dim);
    add_vec(L.q_bias, q_dim);
    add_vec(L.k_bias, kv_dim);
    add_vec(L.v_bias, kv_dim);
    add_vec(L.out_bias, c.dim);
    add_vec(L.up_bias, c.ffn_dim);
    add_vec(L.down_bias, c.dim);
  }
  if (cw->gpu_layers_ == static_cast<int>(c.n_layers)) {
    if (w.output.data != w.token_embd.data) add_matrix(w.output);
    add_vec(w.output_norm, c.dim);
    add_vec(w.output_norm_bias, c.dim);
  }
  uint64_t total = 0;
  for (const auto& [p, n] : tensors) total += n;

  // Pinned staging, two buffers: the copy of one overlaps the fill of the other.
  constexpr uint64_t kStage = 64ull << 20;
  void* staging[2] = {nullptr, nullptr};
  cudaEvent_t done[2];
  cudaStream_t stream;
  KVANT_CUDA_TRY(cudaStreamCreate(&stream), "upload stream");
  for (int i = 0; i < 2; ++i) {
    KVANT_CUDA_TRY(cudaMallocHost(&staging[i], kStage), "pinned staging buffer");
    KVANT_CUDA_TRY(cudaEventCreate(&done[i]), "upload event");
  }
  ProgressBar bar("uploading", total, "B", progress);
  uint64_t sent = 0;
  int buf = 0;
  Status status = Status::ok();
  for (const auto& [host, n] : tensors) {
    if (cw->device_of_.contains(host)) continue;  // tied embeddings
    void* dev = nullptr;
    if (const cudaError_t e = cudaMalloc(&dev, std::max<uint64_t>(n, 16)); e != cudaSuccess) {
      status = Status::error(ErrorCode::out_of_memory, "cannot allocate {} on the GPU for the weights: {}",
                             format_bytes(static_cast<double>(n)), cudaGetErrorString(e));
      break;
    }
    cw->allocations_.push_back(dev);
    cw->device_of_[host] = static_cast<uint8_t*>(dev);
    for (uint64_t off = 0; off < n; off += kStage) {
      const uint64_t len = std::min(kStage, n - off);
      cudaEventSynchronize(done[buf]);  // the buffer's previous copy has finished
      std::memcpy(staging[buf], host + off, len);
      cudaMemcpyAsync(static_cast<uint8_t*>(dev) + off, staging[buf], len, cudaMemcpyHostToDevice, stream);
      cudaEventRecord(done[buf], stream);
      buf ^= 1;
      sent += len;
      bar.update(sent);
    }
    cw->bytes_ += n;
  }
  const cudaError_t e = cudaStreamSynchronize(stream);
  bar.finish();
  for (int i = 0; i < 2; ++i) {
    cudaFreeHost(staging[i]);
    cudaEventDestroy(done[i]);
  }
  cudaStreamDestroy(stream);
  KVANT_TRY(status);
  if (e != cudaSuccess) return cuda_error(e, "weight upload");
  const auto& inv = model.rope_inv_freq();
  KVANT_CUDA_TRY(cudaMalloc(&cw->inv_freq_, std::max<size_t>(inv.size(), 1) * 4), "rope table");
  cw->allocations_.push_back(cw->inv_freq_);
  KVANT_CUDA_TRY(cudaMemcpy(cw->inv_freq_, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice), "rope table");
  return std::shared_ptr<const CudaWeights>(std::move(cw));
}

// ---- executor -----------------------------------------------------------------------------

Result<std::unique_ptr<CudaExecutor>> CudaExecutor::create(const Model& model, std::shared_ptr<const CudaWeights> weights,
                                                           const KvLayout& layout, uint32_t n_pages, int64_t n_ctx,
                                                           int32_t max_seqs, int64_t max_tokens) {
  if (layout.page_tokens != kPageTokens)  // the kernels' page arithmetic assumes it
    return Status::error(ErrorCode::unsupported, "the GPU kernels need {}-token KV pages, not {}", kPageTokens,
                         layout.page_tokens);
  std::unique_ptr<CudaExecutor> x(new CudaExecutor());
  x->model_ = &model;
  x->weights_ = std::move(weights);
  x->pool_layout_ = layout;
  x->pool_layout_.n_layers = static_cast<uint32_t>(x->weights_->gpu_layers());
  x->n_pages_ = n_pages;
  x->n_ctx_ = n_ctx;
  x->max_seqs_ = max_seqs;
  x->max_tokens_ = max_tokens;
  x->max_pages_ = static_cast<int32_t>((n_ctx + layout.page_tokens - 1) / layout.page_tokens + 1);
  KVANT_CUDA_TRY(cudaStreamCreateWithFlags(&x->stream_, cudaStreamNonBlocking), "stream");
  const uint64_t pool_bytes = static_cast<uint64_t>(n_pages) * x->pool_layout_.page_bytes();
  if (pool_bytes > 0) {
    const cudaError_t e = cudaMalloc(&x->pool_, pool_bytes);
    if (e != cudaSuccess)
      return Status::error(ErrorCode::out_of_memory, "cannot allocate a {} KV cache on the GPU: {}",
                           format_bytes(static_cast<double>(pool_bytes)), cudaGetErrorString(e));
    KVANT_CUDA_TRY(cudaMemset(x->pool_, 0, pool_bytes), "KV cache");
  }
  x->input_ints_ = static_cast<size_t>(4 * max_tokens + int64_t{max_seqs} * x->max_pages_);
  KVANT_CUDA_TRY(cudaMalloc(&x->d_inputs_, x->input_ints_ * 4), "batch inputs");
  KVANT_CUDA_TRY(cudaMallocHost(&x->h_inputs_, x->input_ints_ * 4), "batch inputs");
  const ModelConfig& c = model.config();
  x->logit_floats_ = static_cast<size_t>(std::min(max_tokens, cuda::kMaxGemvTokens) * c.vocab_size);
  KVANT_CUDA_TRY(cudaMallocHost(&x->h_logits_, x->logit_floats_ * 4), "logits");
  x->scratch_floats_ = std::max(cuda::attention_scratch_floats(max_tokens, c.n_heads, c.head_dim, n_ctx),
                                static_cast<size_t>(2 * max_tokens * c.ffn_dim));
  KVANT_CUDA_TRY(cudaMalloc(&x->scratch_, x->scratch_floats_ * 4), "scratch");
  const size_t counters = cuda::attention_counters(max_tokens, c.n_heads);
  KVANT_CUDA_TRY(cudaMalloc(&x->counters_, counters * 4), "attention counters");
  KVANT_CUDA_TRY(cudaMemset(x->counters_, 0, counters * 4), "attention counters");
  x->gemm_ = std::make_unique<cuda::Gemm>();
  const char* profile_env = std::getenv("KVANT_CUDA_PROFILE");
  const std::string_view profile = profile_env ? profile_env : "";
  if (profile == "graph") {
    std::string why;
    x->trace_ = kernel_trace_start(&why);
    if (!x->trace_) fmt::print(stderr, "KVANT_CUDA_PROFILE=graph: no kernel timeline: {}\n", why);
  } else {
    x->profile_ = !profile.empty() && profile != "0";
  }
  return x;
}

CudaExecutor::~CudaExecutor() {
  if (trace_) {
    cudaStreamSynchronize(stream_);
    fmt::print(stderr, "{}", kernel_timeline_report(kernel_trace_take()));
  }
  if (profile_ && !profile_ms_.empty()) {
    double total = 0;
    for (const auto& [op, v] : profile_ms_) total += v.first;
    fmt::print(stderr, "CUDA time by op ({:.1f} ms in all):\n", total);
    for (const auto& [op, v] : profile_ms_)
      fmt::print(stderr, "  {:<24} {:9.2f} ms {:5.1f}%  {:8} launches  {:7.1f} us each\n", op, v.first,
                 100.0 * v.first / total, v.second, 1000.0 * v.first / static_cast<double>(v.second));
  }
  cudaFree(counters_);
  cudaFreeHost(greedy_report_);
  cudaFree(greedy_logits_);
  cudaFree(greedy_work_);
  for (cudaEvent_t e : greedy_done_)
    if (e) cudaEventDestroy(e);
  for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g.exec);
  gemm_.reset();
  cudaFree(pool_);
  cudaFree(arena_);
  cudaFree(d_inputs_);
  cudaFreeHost(h_inputs_);
  cudaFreeHost(h_logits_);
  cudaFree(scratch_);
  if (stream_) cudaStreamDestroy(stream_);
}

KvPool CudaExecutor::device_pool() {
  KvPool pool;
  pool.layout = pool_layout_;
  pool.base = pool_;
  pool.device = true;
  pool.copy = [](uint8_t* d, const uint8_t* s, size_t n) { cudaMemcpy(d, s, n, cudaMemcpyDeviceToDevice); };
  pool.download = [](uint8_t* d, const uint8_t* s, size_t n) { cudaMemcpy(d, s, n, cudaMemcpyDeviceToHost); };
  pool.upload = [](uint8_t* d, const uint8_t* s, size_t n) { cudaMemcpy(d, s, n, cudaMemcpyHostToDevice); };
  return pool;
}

Status CudaExecutor::prepare(const Plan& plan) {
  if (plan.arena_bytes <= arena_size_) return Status::ok();
  for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g.exec);  // they hold the old arena's addresses
  graphs_.clear();
  cudaFree(arena_);
  arena_ = nullptr;
  arena_size_ = 0;
  const cudaError_t e = cudaMalloc(&arena_, static_cast<size_t>(plan.arena_bytes));
  if (e != cudaSuccess)
    return Status::error(ErrorCode::out_of_memory, "cannot allocate {} of activations on the GPU",
                         format_bytes(static_cast<double>(plan.arena_bytes)));
  arena_size_ = plan.arena_bytes;
  return Status::ok();
}

Status CudaExecutor::fetch(int64_t offset, float* dst, size_t floats) {
  const bool staged = floats <= logit_floats_;
  KVANT_CUDA_TRY(cudaMemcpyAsync(staged ? h_logits_ : dst, arena_ + offset, floats * 4, cudaMemcpyDeviceToHost, stream_),
                 "logits");
  KVANT_TRY(synchronize());
  if (staged) std::memcpy(dst, h_logits_, floats * 4);
  return Status::ok();
}

Status CudaExecutor::synchronize() {
  KVANT_CUDA_TRY(cudaStreamSynchronize(stream_), "stream");
  return Status::ok();
}

Status CudaExecutor::write_inputs(const BatchInfo& batch, std::span<const std::vector<uint32_t>* const> page_ids) {
  const auto n = static_cast<int64_t>(batch.tokens.size());
  if (n > max_tokens_ || static_cast<int32_t>(page_ids.size()) > max_seqs_)
    return Status::error(ErrorCode::internal, "batch larger than the GPU buffers");
  // Inputs into pinned memory, then one copy to the device.
  int32_t* h = h_inputs_;
  std::memcpy(h, batch.tokens.data(), static_cast<size_t>(n) * 4);
  std::memcpy(h + max_tokens_, batch.positions.data(), static_cast<size_t>(n) * 4);
  std::memcpy(h + 2 * max_tokens_, batch.slot.data(), static_cast<size_t>(n) * 4);
  std::memcpy(h + 3 * max_tokens_, batch.output_rows.data(), batch.output_rows.size() * 4);
  int32_t* table = h + 4 * max_tokens_;
  for (size_t s = 0; s < page_ids.size(); ++s) {
    const auto& ids = *page_ids[s];
    if (static_cast<int32_t>(ids.size()) > max_pages_) return Status::error(ErrorCode::internal, "page table overflow");
    for (size_t i = 0; i < ids.size(); ++i) table[s * static_cast<size_t>(max_pages_) + i] = static_cast<int32_t>(ids[i]);
  }
  KVANT_CUDA_TRY(cudaMemcpyAsync(d_inputs_, h_inputs_, input_ints_ * 4, cudaMemcpyHostToDevice, stream_), "batch inputs");
  single_sequence_ = page_ids.size() == 1;
  n_tokens_ = n;
  return Status::ok();
}

Result<cudaGraphExec_t> CudaExecutor::graph_of(const Plan& plan, size_t begin, size_t end, bool greedy) {
  const auto key = std::make_tuple(plan.id, begin, end, greedy);
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    cudaGraph_t graph;
    KVANT_CUDA_TRY(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "graph capture");
    Status launched = launch_nodes(plan, begin, end);
    if (launched && greedy) {
      const Node& out = plan.graph.nodes()[static_cast<size_t>(plan.graph.output.node)];
      cuda::greedy_next(reinterpret_cast<const float*>(arena_ + out.offset[0]), out.width, d_inputs_, d_inputs_ + max_tokens_,
                        greedy_report_, kGreedySlots, greedy_logits_, greedy_work_, stream_);
      if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) launched = cuda_error(e, "greedy step launch");
    }
    const cudaError_t e = cudaStreamEndCapture(stream_, &graph);
    KVANT_TRY(launched);
    if (e != cudaSuccess) return cuda_error(e, "graph capture");
    Captured c;
    const cudaError_t ie = cudaGraphInstantiate(&c.exec, graph, 0);
    cudaGraphDestroy(graph);
    if (ie != cudaSuccess) return cuda_error(ie, "graph instantiation");
    it = graphs_.emplace(key, c).first;
  }
  return it->second.exec;
}

Status CudaExecutor::run(const Plan& plan, const BatchInfo& batch, std::span<const std::vector<uint32_t>* const> page_ids,
                         size_t begin, size_t end) {
  KVANT_TRY(prepare(plan));
  KVANT_TRY(write_inputs(batch, page_ids));
  // Decode-sized batches replay a captured graph of the node range.
  if (n_tokens_ <= cuda::kMaxGemvTokens && !profile_) {
    KVANT_ASSIGN_OR_RETURN(const cudaGraphExec_t exec, graph_of(plan, begin, end, false));
    KVANT_CUDA_TRY(cudaGraphLaunch(exec, stream_), "graph launch");
    return Status::ok();
  }
  return launch_nodes(plan, begin, end);
}

bool CudaExecutor::can_queue_greedy(const Plan& plan) const {
  if (profile_) return false;
  for (const Node& n : plan.graph.nodes())
    if (!n.on_gpu) return false;
  const Node& out = plan.graph.nodes()[static_cast<size_t>(plan.graph.output.node)];
  return plan.rows(out) == 1;
}

Status CudaExecutor::greedy_begin(const Plan& plan, const BatchInfo& batch, const std::vector<uint32_t>& page_ids) {
  if (batch.tokens.size() != 1) return Status::error(ErrorCode::internal, "greedy steps start from one token");
  KVANT_TRY(prepare(plan));
  if (!greedy_report_) {
    const int64_t vocab = model_->config().vocab_size;
    KVANT_CUDA_TRY(cudaHostAlloc(&greedy_report_, kGreedySlots * 4, cudaHostAllocMapped), "greedy tokens");
    KVANT_CUDA_TRY(cudaMalloc(&greedy_logits_, static_cast<size_t>(2 * vocab) * 4), "greedy logits");
    KVANT_CUDA_TRY(cudaMalloc(&greedy_work_, cuda::greedy_work_bytes()), "greedy work area");
    KVANT_CUDA_TRY(cudaMemset(greedy_work_, 0, cuda::greedy_work_bytes()), "greedy work area");
    for (cudaEvent_t& e : greedy_done_) KVANT_CUDA_TRY(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "greedy event");
  }
  const std::vector<uint32_t>* tables[1] = {&page_ids};
  KVANT_TRY(write_inputs(batch, tables));
  greedy_position_ = batch.positions[0];
  return Status::ok();
}

Status CudaExecutor::greedy_page(size_t index, uint32_t id) {
  if (index >= static_cast<size_t>(max_pages_)) return Status::error(ErrorCode::internal, "page table overflow");
  // A table entry is written once before the steps that read it; a copy of the whole
  // table queued earlier may carry the old value or this one, and this copy follows it.
  int32_t* entry = h_inputs_ + 4 * max_tokens_ + index;
  *entry = static_cast<int32_t>(id);
  KVANT_CUDA_TRY(cudaMemcpyAsync(d_inputs_ + (entry - h_inputs_), entry, 4, cudaMemcpyHostToDevice, stream_), "page table");
  return Status::ok();
}

Status CudaExecutor::greedy_step(const Plan& plan) {
  const size_t end = plan.graph.nodes().size();
  KVANT_ASSIGN_OR_RETURN(const cudaGraphExec_t exec, graph_of(plan, 0, end, true));
  KVANT_CUDA_TRY(cudaGraphLaunch(exec, stream_), "graph launch");
  KVANT_CUDA_TRY(cudaEventRecord(greedy_done_[greedy_position_ % kGreedySlots], stream_), "greedy event");
  ++greedy_position_;
  return Status::ok();
}

Result<int32_t> CudaExecutor::greedy_token(int64_t position) {
  if (position >= greedy_position_ || position < greedy_position_ - (kGreedySlots - 1))
    return Status::error(ErrorCode::internal, "no queued greedy step at position {}", position);
  KVANT_CUDA_TRY(cudaEventSynchronize(greedy_done_[position % kGreedySlots]), "greedy step");
  return static_cast<const volatile int32_t*>(greedy_report_)[position % kGreedySlots];
}

Status CudaExecutor::greedy_logits(int64_t position, float* dst) {
  if (position >= greedy_position_ || position < greedy_position_ - 2)
    return Status::error(ErrorCode::internal, "the logits of position {} are gone", position);
  const int64_t vocab = model_->config().vocab_size;
  KVANT_CUDA_TRY(cudaMemcpy(dst, greedy_logits_ + (position & 1) * vocab, static_cast<size_t>(vocab) * 4,
                            cudaMemcpyDeviceToHost), "greedy logits");
  return Status::ok();
}

Status CudaExecutor::launch_nodes(const Plan& plan, size_t begin, size_t end) {
  for (size_t i = begin; i < end;) {
    cudaEvent_t start = nullptr, stop = nullptr;
    if (profile_) {
      cudaEventCreate(&start);
      cudaEventCreate(&stop);
      cudaEventRecord(start, stream_);
    }
    KVANT_ASSIGN_OR_RETURN(const size_t covered, run_node(plan, i, end));
    if (profile_) {
      cudaEventRecord(stop, stream_);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      const Node& n = plan.graph.nodes()[i];
      std::string key = std::string(op_name(n.op)) + (covered > 1 ? "+quantize" : "");
      if (n.op == Op::matmul) key += n.name == "output" ? " (head)" : "";
      key += plan.rows(n) > cuda::kMaxGemvTokens ? " [prefill]" : " [decode]";
      auto& slot = profile_ms_[key];
      slot.first += ms;
      ++slot.second;
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
    }
    i += covered;
  }
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return cuda_error(e, "kernel launch");
  return Status::ok();
}

// Whether the decode RMSNorm at `index` (and the quantize after it) may be left to the
// GEMVs of the node after them: that node multiplies the records and nothing else in the
// plan reads the norm's output or the records (the GEMVs may not write them: RmsNormIn).
bool CudaExecutor::norm_left_to_gemv(const Plan& plan, size_t index) {
  const auto& nodes = plan.graph.nodes();
  if (index + 2 >= nodes.size()) return false;
  const Node& user = nodes[index + 2];
  const int norm = static_cast<int>(index), quantize = norm + 1;
  if (!user.on_gpu || (user.op != Op::matmul && user.op != Op::matmul_multi && user.op != Op::ffn_gated) ||
      user.in[0] != Ref{norm, 0} || user.q_in != Ref{quantize, 0} || user.residual)
    return false;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (i == index + 1 || i == index + 2 || nodes[i].dead) continue;
    for (const Ref& r : nodes[i].in)
      if (r.node == norm || r.node == quantize) return false;
    if (nodes[i].q_in.node == norm || nodes[i].q_in.node == quantize) return false;
  }
  return plan.graph.output.node != norm && plan.graph.output.node != quantize;
}

Result<size_t> CudaExecutor::run_node(const Plan& plan, size_t index, size_t end) {
  const auto& nodes = plan.graph.nodes();
  const Node& n = nodes[index];
  const ModelConfig& c = model_->config();
  const CudaWeights& W = *weights_;
  const int64_t rows = plan.rows(n), hd = c.head_dim;
  auto out = [&](int port = 0) { return reinterpret_cast<float*>(arena_ + n.offset[port]); };
  auto in = [&](Ref r) { return reinterpret_cast<float*>(arena_ + nodes[static_cast<size_t>(r.node)].offset[r.port]); };
  auto bytes_in = [&](Ref r) { return arena_ + nodes[static_cast<size_t>(r.node)].offset[r.port]; };
  const int32_t* tokens = d_inputs_;
  const int32_t* positions = d_inputs_ + max_tokens_;
  const int32_t* slots = d_inputs_ + 2 * max_tokens_;
  const int32_t* output_rows = d_inputs_ + 3 * max_tokens_;
  const cuda::DeviceKv kv{pool_layout_, pool_, d_inputs_ + 4 * max_tokens_, max_pages_};
  cudaStream_t s = stream_;

  const bool decode = rows <= cuda::kMaxGemvTokens;
  const uint8_t* xq = n.q_in.valid() ? bytes_in(n.q_in) : nullptr;
  // The RMSNorm of this node's input, where the norm node left it to this node's GEMVs.
  const cuda::RmsNormIn pending = std::exchange(pending_norm_, cuda::RmsNormIn{});
  const cuda::RmsNormIn* norm = pending.in ? &pending : nullptr;
  // In decode, where the next node quantizes this node's output for a GEMV: its records,
  // for this node's kernel to write itself (the node is then covered too); else null.
  auto fused_quantize = [&]() -> uint8_t* {
    const Node* next = index + 1 < end ? &nodes[index + 1] : nullptr;
    return decode && next && next->op == Op::quantize && next->in[0].node == static_cast<int>(index)
               ? arena_ + next->offset[0]
               : nullptr;
  };
  auto device_matrix = [&](const cpu::WeightMatrix* host) -> Result<cuda::DeviceMatrix> {
    const cuda::DeviceMatrix w = W.matrix(*host);
    if (!w.data) return Status::error(ErrorCode::internal, "weight of '{}' is not on the GPU", n.name);
    return w;
  };
  // ys(p) (= or +=) the node's matrix p · x (+ its bias) for the batch's rows. Decode:
  // GEMVs, one launch for all of them where they share a type and width (q, k, v).
  // Prefill: the GEMM, which converts their shared input to f16 once.
  auto matmuls = [&](int count, auto&& y_of, bool accumulate) -> Status {
    cuda::DeviceMatrix ws[3];
    const cuda::DeviceMatrix* wp[3];
    float* ys[3];
    const float* bs[3];
    bool same = true;
    for (int p = 0; p < count; ++p) {
      KVANT_ASSIGN_OR_RETURN(ws[p], device_matrix(n.w[p]));
      wp[p] = &ws[p];
      ys[p] = y_of(p);
      bs[p] = W.vec(n.bias[p]);
      same = same && ws[p].dtype == ws[0].dtype && ws[p].cols == ws[0].cols;
    }
    if (decode) {
      if (same) {
        cuda::gemv_multi(wp, ys, bs, count, in(n.in[0]), xq, rows, accumulate, s, norm);
        return Status::ok();
      }
      // Matrices of different types or widths, a launch each: a norm left to them runs
      // once, first.
      if (norm) cuda::rms_norm_quantize(*norm, rows, ws[0].cols, s);
      for (int p = 0; p < count; ++p) cuda::gemv_multi(&wp[p], &ys[p], &bs[p], 1, in(n.in[0]), xq, rows, accumulate, s);
      return Status::ok();
    }
    if (const char* err = gemm_->run_shared(wp, ys, count, in(n.in[0]), rows, 0, accumulate, s))
      return Status::error(ErrorCode::internal, "{} in '{}'", err, n.name);
    for (int p = 0; p < count; ++p)
      if (bs[p]) cuda::add_bias(ys[p], bs[p], ws[p].rows, rows, ws[p].rows, s);
    return Status::ok();
  };

  switch (n.op) {
    case Op::embed: {
      const cuda::DeviceMatrix table = W.matrix(model_->weights().token_embd);
      if (c.learned_pos) {
        const cuda::DeviceMatrix pos = W.matrix(model_->weights().pos_embd);
        cuda::embed(table, &pos, tokens, positions, rows, out(), s);
      } else {
        cuda::embed(table, nullptr, tokens, positions, rows, out(), s);
      }
      return size_t{1};
    }
    case Op::select_rows: cuda::select_rows(in(n.in[0]), output_rows, rows, n.width, out(), s); return size_t{1};
    case Op::norm: {
      // A decode-sized RMSNorm followed by the quantize of its output: left to the GEMVs
      // of the node after, when only they read it (RmsNormIn), else one kernel.
      if (uint8_t* q = fused_quantize(); q && n.norm == NormKind::rms) {
        if (index + 2 < end && norm_left_to_gemv(plan, index)) {
          pending_norm_ = cuda::RmsNormIn{in(n.in[0]), W.vec(n.vec), n.eps, out(), q};
          return size_t{2};
        }
        cuda::rms_norm_quantize(in(n.in[0]), W.vec(n.vec), rows, n.width, n.eps, out(), q, s);
        return size_t{2};
      }
      if (n.norm == NormKind::rms) cuda::rms_norm(in(n.in[0]), W.vec(n.vec), rows, n.width, n.eps, out(), s);
      else cuda::layer_norm(in(n.in[0]), W.vec(n.vec), W.vec(n.bias[0]), rows, n.width, n.eps, out(), s);
      return size_t{1};
    }
    case Op::quantize:
      if (decode) cuda::quantize_acts(in(n.in[0]), rows, n.width, arena_ + n.offset[0], s);
      return size_t{1};  // the GEMM path reads f32 activations
    case Op::matmul: {
      if (n.residual && !n.in_place) cuda::copy_rows(in(n.in[1]), out(), n.w[0]->rows, rows, s);
      KVANT_TRY(matmuls(1, [&](int) { return out(); }, n.residual));
      return size_t{1};
    }
    case Op::matmul_multi:
      KVANT_TRY(matmuls(n.n_outputs(), [&](int p) { return out(p); }, false));
      return size_t{1};
    case Op::ffn_gated: {
      if (decode && n.w[0]->dtype == n.w[1]->dtype) {  // gate, up and SiLU in one launch
        KVANT_ASSIGN_OR_RETURN(const cuda::DeviceMatrix g, device_matrix(n.w[0]));
        KVANT_ASSIGN_OR_RETURN(const cuda::DeviceMatrix u, device_matrix(n.w[1]));
        cuda::gemv_gated(g, u, in(n.in[0]), xq, rows, out(), s, norm);
        return size_t{1};
      }
      float* gate = scratch_;
      float* up = scratch_ + rows * n.w[0]->rows;
      KVANT_TRY(matmuls(2, [&](int p) { return p == 0 ? gate : up; }, false));  // no biases (planner.cpp)
      cuda::silu_mul(gate, up, rows * n.w[0]->rows, out(), s);
      return size_t{1};
    }
    case Op::rope:
      cuda::rope(in(n.in[0]), out(), rows, n.width / hd, hd, positions, W.inv_freq(), s);
      return size_t{1};
    case Op::kv_store:
      cuda::kv_store(kv, static_cast<uint32_t>(n.layer), in(n.in[0]), in(n.in[1]), rows, positions, slots, nullptr, s);
      return size_t{1};
    case Op::rope_store:
      cuda::rope_store(kv, static_cast<uint32_t>(n.layer), in(n.in[0]), out(), n.width / hd, in(n.in[1]), in(n.in[2]), rows,
                       positions, slots, W.inv_freq(), s);
      return size_t{1};
    case Op::attention: {
      // In decode, the attention kernel also writes the int8 records of its output that
      // the next node (quantize, for the output projection's GEMV) would make.
      uint8_t* q = fused_quantize();
      // The output projection launches early, except a q4 one: a pipelined GEMV (q8 and
      // f16 weights) copies its weights' first stages during the attention (on the H100
      // q8 decode +0.14% alone, +1.3% with the pipelined GEMVs' even row groups, f16
      // +0.65% with them), while the q4 GEMVs lose by it (-5%: their early blocks' loads
      // slow the attention more than they save).
      const size_t next = index + (q ? 2u : 1u);
      const bool early = decode && next < end && nodes[next].op == Op::matmul && nodes[next].w[0] &&
                         nodes[next].w[0]->dtype != DType::q4;
      cuda::attention(kv, static_cast<uint32_t>(n.layer), in(n.in[0]), rows, c.n_heads, c.n_kv_heads, positions, slots,
                      single_sequence_, static_cast<int32_t>(c.sliding_window), n_ctx_, out(), q, scratch_, counters_, s, early);
      return size_t{q ? 2u : 1u};
    }
    case Op::silu_mul: cuda::silu_mul(in(n.in[0]), in(n.in[1]), rows * n.width, out(), s); return size_t{1};
    case Op::gelu: cuda::gelu(in(n.in[0]), rows * n.width, n.gelu == GeluKind::tanh, out(), s); return size_t{1};
    case Op::add: cuda::add(in(n.in[0]), in(n.in[1]), rows * n.width, out(), s); return size_t{1};
  }
  return size_t{1};
}

}  // namespace kvant
