#include "runtime/cpu_executor.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"

namespace kvant {

namespace {

std::pair<int64_t, int64_t> split(int64_t total, int ith, int nth) {
  const int64_t per = (total + nth - 1) / nth;
  const int64_t b = std::min(total, per * ith);
  return {b, std::min(total, b + per)};
}

// Rows per matmul work item: about four items per thread, 4 to 256 rows. An item's
// first row tile is not streamed in by the one before it (kernels/cpu/matmul_avx512.cpp),
// so items are long: a cap of 256 instead of 64, with the first tile prefetched at once,
// took llama-1b q4 decode on two threads from 69.3 to 73.6 tok/s (five alternated runs).
int64_t matmul_chunk(int64_t rows, int nth) {
  const int64_t c = rows / (static_cast<int64_t>(nth) * 4);
  return std::clamp<int64_t>((c + 3) / 4 * 4, 4, 256);
}

}  // namespace

// The barrier between nodes. OpenMP's own spins (a core at 100% for a long while) or,
// with OMP_WAIT_POLICY=PASSIVE, sleeps at once; a spinning thread whose partner lost
// its core to another process turns every barrier into a scheduler time slice (a
// 135M model decoded at 3 tok/s beside one busy process, 82 with sleeping waits).
// This one spins for a microsecond or two, then sleeps on a futex (std::atomic::wait).
// Beside one busy process: 18 tok/s spinning ~40 µs, 50 with ~2 µs, 57 with none.
void CpuExecutor::Barrier::wait(int n) {
  const uint32_t gen = generation_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
    arrived_.store(0, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    return;
  }
  for (int i = 0; i < kSpins; ++i) {
    if (generation_.load(std::memory_order_acquire) != gen) return;
    _mm_pause();
  }
  while (generation_.load(std::memory_order_acquire) == gen) generation_.wait(gen, std::memory_order_acquire);
}

struct CpuExecutor::RunState {
  const BatchInfo* batch = nullptr;
  std::vector<float> cos, sin;  // n_tokens × head_dim/2
  int64_t half = 0;
};

CpuExecutor::CpuExecutor(const Model& model, const KvLayout& layout, int threads, uint32_t first_layer)
    : model_(model), layout_(layout), threads_(threads), first_layer_(first_layer), simd_(cpu::active_simd_level()) {}

CpuExecutor::~CpuExecutor() { std::free(arena_); }

Status CpuExecutor::prepare(const Plan& plan) {
  if (plan.arena_bytes > arena_size_) {
    std::free(arena_);
    const auto size = static_cast<size_t>((plan.arena_bytes + 63) / 64 * 64);
    arena_ = static_cast<uint8_t*>(std::aligned_alloc(64, size));
    if (!arena_) {
      arena_size_ = 0;
      return Status::error(ErrorCode::out_of_memory, "cannot allocate {} bytes of activations", size);
    }
    arena_size_ = plan.arena_bytes;
  }
  return Status::ok();
}

Status CpuExecutor::run(const Plan& plan, const BatchInfo& batch, size_t begin, size_t end) {
  const auto& nodes = plan.graph.nodes();
  KVANT_TRY(prepare(plan));
  if (n_counters_ < nodes.size()) {
    counters_ = std::make_unique<std::atomic<int64_t>[]>(nodes.size());
    n_counters_ = nodes.size();
  }
  for (size_t i = 0; i < nodes.size(); ++i) counters_[i].store(0, std::memory_order_relaxed);

  const ModelConfig& c = model_.config();
  RunState st;
  st.batch = &batch;
  if (!c.learned_pos) {  // RoPE angles of each token: position · inv_freq, in float32 like transformers
    const auto& inv_freq = model_.rope_inv_freq();
    st.half = static_cast<int64_t>(inv_freq.size());
    st.cos.resize(batch.tokens.size() * inv_freq.size());
    st.sin.resize(st.cos.size());
    for (size_t t = 0; t < batch.tokens.size(); ++t)
      for (size_t i = 0; i < inv_freq.size(); ++i) {
        const float angle = static_cast<float>(batch.positions[t]) * inv_freq[i];
        st.cos[t * inv_freq.size() + i] = std::cos(angle);
        st.sin[t * inv_freq.size() + i] = std::sin(angle);
      }
  }
  // Per-thread scratch: attention state, a chunk of gate and up rows, one token's keys
  // (rope_store) or one embedding row (learned positions).
  cpu::AttentionArgs probe{&layout_, 0, nullptr, c.n_heads, c.n_kv_heads, c.head_dim, 1.0f};
  const auto scratch_floats = static_cast<size_t>(std::max<int64_t>({cpu::attention_scratch_floats(probe),
                                                                     2 * plan.options.n_tokens * 64,
                                                                     int64_t{c.n_kv_heads} * c.head_dim, c.dim}));
  scratch_.resize(static_cast<size_t>(threads_));
  for (auto& s : scratch_)
    if (s.size() < scratch_floats) s.resize(scratch_floats);

#pragma omp parallel num_threads(threads_)
  {
    const int ith = omp_get_thread_num(), nth = omp_get_num_threads();
    for (size_t i = begin; i < end; ++i) {
      run_node(plan, i, st, ith, nth);
      if (nth > 1) barrier_.wait(nth);
    }
  }
  return Status::ok();
}

void CpuExecutor::run_node(const Plan& plan, size_t index, RunState& st, int ith, int nth) {
  const auto& nodes = plan.graph.nodes();
  const Node& n = nodes[index];
  const BatchInfo& b = *st.batch;
  const ModelConfig& c = model_.config();
  const ModelWeights& w = model_.weights();
  const int64_t rows = plan.rows(n);
  auto out = [&](int port = 0) { return reinterpret_cast<float*>(arena_ + n.offset[port]); };
  auto in_ptr = [&](Ref r) { return reinterpret_cast<float*>(arena_ + nodes[static_cast<size_t>(r.node)].offset[r.port]); };
  auto in_width = [&](Ref r) { return nodes[static_cast<size_t>(r.node)].out_width(r.port); };
  const int64_t hd = c.head_dim;
  float* scratch = scratch_[static_cast<size_t>(ith)].data();
  // Quantize nodes write packed activations too (after the records, cpu::act_buffer_bytes)
  // where there are enough rows and this SIMD level's matmul reads them.
  auto writes_packed = [&](int64_t q_rows) { return q_rows >= cpu::kPackedMinTokens && cpu::reads_packed_acts(simd_); };
  // A matmul's quantized activations: the quantize node's records, and their packed form
  // where it wrote one.
  auto quantized_input = [&](cpu::MatmulArgs& a, const Node& node, int64_t tokens) {
    if (!node.q_in.valid()) return;
    const Node& q = nodes[static_cast<size_t>(node.q_in.node)];
    a.xq = arena_ + q.offset[0];
    const int64_t q_rows = plan.rows(q);
    if (writes_packed(q_rows) && tokens >= cpu::kPackedMinTokens) a.xp = cpu::packed_acts_in(a.xq, q_rows, q.width);
  };

  // Writes the K and V rows of token t into its KV slots. Keys with offset rows
  // (kernels/layout.h) must be written in position order per sequence and head: those
  // are left to store_keys_in_order.
  const bool ordered_keys = layout_.key_offsets();
  auto store_kv = [&](int64_t t, int layer, const float* k, const float* v) {
    const int64_t pos = b.positions[static_cast<size_t>(t)];
    uint8_t* const* pages = b.page_tables[static_cast<size_t>(b.slot[static_cast<size_t>(t)])];
    for (uint32_t g = 0; g < c.n_kv_heads; ++g)
      for (uint32_t kind = ordered_keys ? 1 : 0; kind < 2; ++kind)
        cpu::store_kv(layout_, pages, static_cast<uint32_t>(layer) - first_layer_, kind, g, pos,
                      (kind == 0 ? k : v) + g * hd);
  };
  // The keys, page by page in batch order (a sequence's tokens come in position order,
  // contiguous): a page's offset rows first when it starts in the batch (a head per
  // thread), then its rows (split over tokens and heads), a barrier after each step, as
  // the next page's offset rows read this page's rows. RoPE first when `rope`.
  auto store_keys_in_order = [&](int layer, const float* keys, bool rope) {
    if (!ordered_keys) return;
    const int64_t kv_dim = int64_t{c.n_kv_heads} * hd, P = layout_.page_tokens;
    const auto L = static_cast<uint32_t>(layer) - first_layer_;
    auto pos_of = [&](int64_t t) { return int64_t{b.positions[static_cast<size_t>(t)]}; };
    auto seq_of = [&](int64_t t) { return b.slot[static_cast<size_t>(t)]; };
    auto key = [&](int64_t t, int64_t g) {  // token t's key for head g, in scratch
      float* k = scratch;
      std::memcpy(k, keys + t * kv_dim + g * hd, static_cast<size_t>(hd) * 4);
      if (rope) cpu::rope(k, 1, hd, st.cos.data() + t * st.half, st.sin.data() + t * st.half);
      return k;
    };
    for (int64_t t0 = 0; t0 < rows;) {
      int64_t t1 = t0 + 1;  // the run [t0, t1): one sequence's tokens in one page
      while (t1 < rows && seq_of(t1) == seq_of(t0) && pos_of(t1) == pos_of(t1 - 1) + 1 && pos_of(t1) % P != 0) ++t1;
      uint8_t* const* pages = b.page_tables[static_cast<size_t>(seq_of(t0))];
      if (pos_of(t0) % P == 0) {
        for (int64_t g = ith; g < c.n_kv_heads; g += nth)
          cpu::set_key_offset(layout_, pages, L, static_cast<uint32_t>(g), pos_of(t0) / P,
                              pos_of(t0) == 0 ? key(t0, g) : nullptr);
        if (nth > 1) barrier_.wait(nth);
      }
      const auto [i0, i1] = split((t1 - t0) * c.n_kv_heads, ith, nth);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t t = t0 + i / c.n_kv_heads, g = i % c.n_kv_heads;
        cpu::store_kv(layout_, pages, L, 0, static_cast<uint32_t>(g), pos_of(t), key(t, g), false);
      }
      if (t1 < rows && nth > 1) barrier_.wait(nth);
      t0 = t1;
    }
  };

  switch (n.op) {
    case Op::embed: {
      const auto [t0, t1] = split(rows, ith, nth);
      for (int64_t t = t0; t < t1; ++t) {
        float* o = out() + t * n.width;
        cpu::dequantize_row(w.token_embd.dtype, w.token_embd.data, w.token_embd.rows, w.token_embd.cols,
                            b.tokens[static_cast<size_t>(t)], o);
        if (c.learned_pos) {
          cpu::dequantize_row(w.pos_embd.dtype, w.pos_embd.data, w.pos_embd.rows, w.pos_embd.cols,
                              b.positions[static_cast<size_t>(t)], scratch);
          for (int64_t i = 0; i < n.width; ++i) o[i] += scratch[i];
        }
      }
      return;
    }
    case Op::select_rows: {
      const auto [r0, r1] = split(rows, ith, nth);
      for (int64_t r = r0; r < r1; ++r)
        std::memcpy(out() + r * n.width, in_ptr(n.in[0]) + b.output_rows[static_cast<size_t>(r)] * n.width,
                    static_cast<size_t>(n.width) * 4);
      return;
    }
    case Op::norm: {
      const auto [r0, r1] = split(rows, ith, nth);
      for (int64_t r = r0; r < r1; ++r) {
        const float* x = in_ptr(n.in[0]) + r * n.width;
        if (n.norm == NormKind::rms) cpu::rms_norm(x, n.vec, n.width, n.eps, out() + r * n.width, simd_);
        else cpu::layer_norm(x, n.vec, n.bias[0], n.width, n.eps, out() + r * n.width);
      }
      return;
    }
    case Op::quantize: {
      const auto [r0, r1] = split(rows, ith, nth);
      for (int64_t r = r0; r < r1; ++r)
        cpu::quantize_token(in_ptr(n.in[0]) + r * n.width, n.width, rows, r, arena_ + n.offset[0], writes_packed(rows), simd_);
      return;
    }
    case Op::matmul:
    case Op::matmul_multi: {
      // Chunks of rows of every output, handed out through the node's counter.
      const int ports = n.n_outputs();
      int64_t chunk[3], n_chunks[3], total = 0;
      for (int p = 0; p < ports; ++p) {
        chunk[p] = matmul_chunk(n.w[p]->rows, nth);
        n_chunks[p] = (n.w[p]->rows + chunk[p] - 1) / chunk[p];
        total += n_chunks[p];
      }
      for (int64_t item = counters_[index].fetch_add(1); item < total; item = counters_[index].fetch_add(1)) {
        int p = 0;
        int64_t local = item;
        while (local >= n_chunks[p]) local -= n_chunks[p++];
        const cpu::WeightMatrix& W = *n.w[p];
        const int64_t r0 = local * chunk[p], r1 = std::min(W.rows, r0 + chunk[p]);
        cpu::MatmulArgs a;
        a.w = W;
        a.x = in_ptr(n.in[0]);
        a.ldx = in_width(n.in[0]);
        quantized_input(a, n, rows);
        a.n_tokens = rows;
        a.y = out(p);
        a.ldy = W.rows;
        if (n.residual) {
          a.accumulate = true;
          if (!n.in_place) {
            const float* res = in_ptr(n.in[1]);
            for (int64_t t = 0; t < rows; ++t)
              std::memcpy(a.y + t * W.rows + r0, res + t * W.rows + r0, static_cast<size_t>(r1 - r0) * 4);
          }
        }
        cpu::matmul(a, r0, r1, simd_);
        if (const float* bias = n.bias[p])
          for (int64_t t = 0; t < rows; ++t)
            for (int64_t r = r0; r < r1; ++r) a.y[t * W.rows + r] += bias[r];
      }
      return;
    }
    case Op::ffn_gated: {
      const cpu::WeightMatrix& G = *n.w[0];
      const cpu::WeightMatrix& U = *n.w[1];
      const int64_t chunk = std::min<int64_t>(64, matmul_chunk(G.rows, nth));
      const int64_t n_chunks = (G.rows + chunk - 1) / chunk;
      float* gate = scratch;
      float* up = scratch + rows * chunk;
      for (int64_t item = counters_[index].fetch_add(1); item < n_chunks; item = counters_[index].fetch_add(1)) {
        const int64_t r0 = item * chunk, r1 = std::min(G.rows, r0 + chunk);
        cpu::MatmulArgs a;
        a.x = in_ptr(n.in[0]);
        a.ldx = in_width(n.in[0]);
        quantized_input(a, n, rows);
        a.n_tokens = rows;
        a.ldy = chunk;
        a.y_row0 = r0;
        a.w = G;
        a.y = gate;
        cpu::matmul(a, r0, r1, simd_);
        a.w = U;
        a.y = up;
        cpu::matmul(a, r0, r1, simd_);
        for (int64_t t = 0; t < rows; ++t)
          cpu::silu_mul(gate + t * chunk, up + t * chunk, r1 - r0, out() + t * G.rows + r0, simd_);
      }
      return;
    }
    case Op::rope: {
      const auto [t0, t1] = split(rows, ith, nth);
      for (int64_t t = t0; t < t1; ++t) {
        float* o = out() + t * n.width;
        std::memcpy(o, in_ptr(n.in[0]) + t * n.width, static_cast<size_t>(n.width) * 4);
        cpu::rope(o, n.width / hd, hd, st.cos.data() + t * st.half, st.sin.data() + t * st.half);
      }
      return;
    }
    case Op::kv_store: {
      const auto [t0, t1] = split(rows, ith, nth);
      const int64_t kv_dim = int64_t{c.n_kv_heads} * hd;
      for (int64_t t = t0; t < t1; ++t) store_kv(t, n.layer, in_ptr(n.in[0]) + t * kv_dim, in_ptr(n.in[1]) + t * kv_dim);
      store_keys_in_order(n.layer, in_ptr(n.in[0]), false);
      return;
    }
    case Op::rope_store: {
      const auto [t0, t1] = split(rows, ith, nth);
      const int64_t kv_dim = int64_t{c.n_kv_heads} * hd;
      for (int64_t t = t0; t < t1; ++t) {
        const float* cs = st.cos.data() + t * st.half;
        const float* sn = st.sin.data() + t * st.half;
        float* q = out() + t * n.width;
        std::memcpy(q, in_ptr(n.in[0]) + t * n.width, static_cast<size_t>(n.width) * 4);
        cpu::rope(q, n.width / hd, hd, cs, sn);
        float* k = ordered_keys ? nullptr : scratch;  // ordered keys: store_keys_in_order
        if (k) {
          std::memcpy(k, in_ptr(n.in[1]) + t * kv_dim, static_cast<size_t>(kv_dim) * 4);
          cpu::rope(k, c.n_kv_heads, hd, cs, sn);
        }
        store_kv(t, n.layer, k, in_ptr(n.in[2]) + t * kv_dim);
      }
      store_keys_in_order(n.layer, in_ptr(n.in[1]), true);
      return;
    }
    case Op::attention: {
      const int64_t items = rows * c.n_kv_heads;
      cpu::AttentionArgs a{&layout_, static_cast<uint32_t>(n.layer) - first_layer_, nullptr, c.n_heads, c.n_kv_heads, hd,
                           1.0f / std::sqrt(static_cast<float>(hd))};
      for (int64_t item = counters_[index].fetch_add(1); item < items; item = counters_[index].fetch_add(1)) {
        const int64_t t = item / c.n_kv_heads, g = item % c.n_kv_heads;
        const int64_t pos = b.positions[static_cast<size_t>(t)];
        const int64_t begin = c.sliding_window ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
        a.pages = b.page_tables[static_cast<size_t>(b.slot[static_cast<size_t>(t)])];
        cpu::attend_group(a, g, in_ptr(n.in[0]) + t * n.width, begin, pos + 1, out() + t * n.width, scratch, simd_);
      }
      return;
    }
    case Op::silu_mul:
    case Op::gelu:
    case Op::add: {
      const auto [i0, i1] = split(rows * n.width, ith, nth);
      const float* x = in_ptr(n.in[0]);
      float* o = out();
      if (n.op == Op::silu_mul) {
        const float* y = in_ptr(n.in[1]);
        cpu::silu_mul(x + i0, y + i0, i1 - i0, o + i0, simd_);
      } else if (n.op == Op::add) {
        const float* y = in_ptr(n.in[1]);
        for (int64_t i = i0; i < i1; ++i) o[i] = x[i] + y[i];
      } else {
        std::memcpy(o + i0, x + i0, static_cast<size_t>(i1 - i0) * 4);
        if (n.gelu == GeluKind::tanh) cpu::gelu_tanh(o + i0, i1 - i0);
        else cpu::gelu_erf(o + i0, i1 - i0);
      }
      return;
    }
  }
}

}  // namespace kvant
