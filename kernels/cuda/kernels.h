// Launchers of the CUDA kernels (host-callable; every pointer is device memory unless
// said otherwise). Each kernel has a CPU reference twin in kernels/cpu and is tested
// against it on the GPU machine (tests/cuda_kernels_test.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "format/dtype.h"
#include "kernels/layout.h"

namespace kvant::cuda {

// A weight matrix [rows, cols] in its .kvant layout, in device memory.
struct DeviceMatrix {
  DType dtype = DType::f32;
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;
};

// ---- rows and elementwise ------------------------------------------------------------

void embed(const DeviceMatrix& table, const DeviceMatrix* positions_table, const int32_t* tokens,
           const int32_t* positions, int64_t n, float* out, cudaStream_t stream);
void select_rows(const float* in, const int32_t* rows, int64_t n, int64_t width, float* out, cudaStream_t stream);
void rms_norm(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* out, cudaStream_t stream);
void layer_norm(const float* x, const float* w, const float* b, int64_t rows, int64_t n, float eps, float* out,
                cudaStream_t stream);
// rms_norm, and the normalized rows quantized as quantize_acts would (q: act_bytes(n) per row;
// null: rms_norm alone).
void rms_norm_quantize(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* out, uint8_t* q,
                       cudaStream_t stream);
// out = x rotated per head at each token's position (out may equal x).
void rope(const float* x, float* out, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq, cudaStream_t stream);
void add(const float* a, const float* b, int64_t n, float* out, cudaStream_t stream);
void silu_mul(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream);
void gelu(const float* x, int64_t n, bool tanh_approximation, float* out, cudaStream_t stream);
// y[t * ldy + r] += bias[r] for r < rows, t < n.
void add_bias(float* y, const float* bias, int64_t rows, int64_t n, int64_t ldy, cudaStream_t stream);
// y[t * ldy + r] = x[t * ldy + r] (copy of a residual before accumulating into y).
void copy_rows(const float* x, float* y, int64_t width, int64_t n, cudaStream_t stream);
// Greedy decoding's step on the device: the first index t of the largest of the n logits
// (NaN never wins; 0 if every one is NaN), as kvant::argmax (runtime/sampler.h). With p =
// *position: *token = t, *position = p + 1 (the next step's input), report[p %
// report_slots] = t (report may be mapped host memory) and, when keep is not null, the
// logits copied to keep + (p & 1) · n. work: greedy_work_bytes(), zeroed once (the kernel
// leaves it zero); one launch at a time per work area.
size_t greedy_work_bytes();
void greedy_next(const float* logits, int64_t n, int32_t* token, int32_t* position, int32_t* report, int report_slots,
                 float* keep, void* work, cudaStream_t stream);

// ---- KV cache ----------------------------------------------------------------------------

// The device view of a page pool: page ids per sequence slot in a table of
// max_pages entries each; page p of the pool is at base + p * layout.page_bytes().
struct DeviceKv {
  KvLayout layout;
  uint8_t* base = nullptr;
  const int32_t* page_table = nullptr;  // [slots × max_pages]
  int32_t max_pages = 0;
};

// Stores each token's K and V rows (n × n_kv_heads × head_dim) at its position; when
// inv_freq is not null, K is first rotated by RoPE. The row encodings are those of
// kernels/layout.h (q4 rows Hadamard-rotated, with the scale search).
void kv_store(const DeviceKv& kv, uint32_t layer, const float* k, const float* v, int64_t n, const int32_t* positions,
              const int32_t* slots, const float* inv_freq, cudaStream_t stream);
// The same, and in the same launch q_out = RoPE(q) for the n × n_heads query rows.
void rope_store(const DeviceKv& kv, uint32_t layer, const float* q, float* q_out, int64_t n_heads, const float* k,
                const float* v, int64_t n, const int32_t* positions, const int32_t* slots, const float* inv_freq,
                cudaStream_t stream);

// Attention of n query tokens (n × n_heads × head_dim) over their sequences' cached
// positions [max(0, pos - window + 1), pos] (window 0: all). Batches of one sequence
// with more than kMaxGemvTokens tokens and head_dim 64 or 128 use a tensor-core
// flash-attention kernel (causal, GQA); the rest split-K flash-decoding (scratch:
// attention_scratch_floats). max_context bounds every token's position + 1.
// counters: attention_counters ints, zero before the first call (the kernel leaves them zero).
// out_q, when not null, also receives the output rows' int8 records (quantize_acts),
// written by the attention kernel itself for decode batches. launch_next_early: the
// split-K kernel lets the next kernel launch once its blocks are past their wait
// (programmatic launch), so that its early blocks overlap the attention.
size_t attention_scratch_floats(int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t max_context);
size_t attention_counters(int64_t n_tokens, int64_t n_heads);
void attention(const DeviceKv& kv, uint32_t layer, const float* q, int64_t n_tokens, int64_t n_heads,
               int64_t n_kv_heads, const int32_t* positions, const int32_t* slots, bool single_sequence,
               int32_t window, int64_t max_context, float* out, uint8_t* out_q, float* scratch, int* counters,
               cudaStream_t stream, bool launch_next_early = false);

// ---- matmul -----------------------------------------------------------------------------

// int8 activations for dp4a GEMV: per token int8 q[k] | int8 lo[k] (the residual in 1/256
// steps, as on the CPU) | float scale[k/32] | int32 sum16[k/16] (Σ 256·q + lo over each
// 16 values, for q4's +8 offset), act_bytes(k) bytes, 16-byte aligned.
size_t act_bytes(int64_t k);
void quantize_acts(const float* x, int64_t n, int64_t k, uint8_t* out, cudaStream_t stream);

// Decode GEMV for n ≤ 8 tokens: y[t * ldy + r] (=, or += when accumulate) Σ_k W[r,k] x_t[k].
// Float weights read x (n × cols f32); q8/q4 read xq (quantize_acts).
constexpr int64_t kMaxGemvTokens = 8;
void gemv(const DeviceMatrix& w, const float* x, const uint8_t* xq, int64_t n, float* y, int64_t ldy, bool accumulate,
          cudaStream_t stream);
// An RMSNorm (of `in`, n rows of the GEMV's width, weight w) whose output a GEMV below
// multiplies, left to the GEMV: q8 GEMVs on the copy pipeline make its int8 records in
// each block (no norm kernel, nothing written to out or q); the others run
// rms_norm_quantize into out and q, the x and xq they are given, first.
struct RmsNormIn {
  const float* in = nullptr;
  const float* w = nullptr;
  float eps = 0.0f;
  float* out = nullptr;
  uint8_t* q = nullptr;
};
// The norm where the GEMV does not take it: rms_norm_quantize of its `in` into its out and q.
void rms_norm_quantize(const RmsNormIn& norm, int64_t rows, int64_t n, cudaStream_t stream);
// Up to three matrices of one input, dtype and row length in one launch (q, k, v); y[i]
// is [n, w[i].rows]; bias[i] may be null.
void gemv_multi(const DeviceMatrix* const* w, float* const* y, const float* const* bias, int count, const float* x,
                const uint8_t* xq, int64_t n, bool accumulate, cudaStream_t stream, const RmsNormIn* norm = nullptr);
// out = silu(gate · x) * (up · x) for n ≤ 8 tokens, one launch.
void gemv_gated(const DeviceMatrix& gate, const DeviceMatrix& up, const float* x, const uint8_t* xq, int64_t n, float* out,
                cudaStream_t stream, const RmsNormIn* norm = nullptr);

// The decode GEMVs above take the copy pipeline (gemv_pipelined.cu) where it applies:
// an sm_90 GPU, q8/f16 weights with rows a multiple of 256 long, activations and two
// stages in shared memory; the register-streaming kernels take the rest (q4 weights
// among them: why is in gemv_pipelined.cu). The pipelined paths return false, launching
// nothing, where they do not apply (also where a norm is left to them and the weights
// are not q8). set_pipelined_gemv(false) sends every GEMV to the register-streaming
// kernels (tests compare both paths against the CPU; the variable
// KVANT_CUDA_GEMV=streaming starts a process that way, for measurements).
bool gemv_pipelined(const DeviceMatrix* const* w, float* const* y, const float* const* bias, int count, const float* x,
                    const uint8_t* xq, int64_t n, bool accumulate, cudaStream_t stream, const RmsNormIn* norm = nullptr);
bool gemv_gated_pipelined(const DeviceMatrix& gate, const DeviceMatrix& up, const float* x, const uint8_t* xq, int64_t n,
                          float* out, cudaStream_t stream, const RmsNormIn* norm = nullptr);
void set_pipelined_gemv(bool enabled);

// Prefill GEMM through cuBLAS tensor cores: quantized weights are first dequantized to
// f16 into a scratch buffer, activations converted to f16 (bf16 for bf16 weights); f32
// weights multiply in f32. One per stream; not thread safe.
class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  // Returns an error string on failure (nullptr on success).
  const char* run(const DeviceMatrix& w, const float* x, int64_t n, float* y, int64_t ldy, bool accumulate,
                  cudaStream_t stream);
  // ys[i] (= or +=) ws[i] x for matrices of one input (q, k, v; gate, up): x is converted
  // to f16 once. Each ys[i] has ldy floats per token (0: its matrix's rows).
  const char* run_shared(const DeviceMatrix* const* ws, float* const* ys, int count, const float* x, int64_t n,
                         int64_t ldy, bool accumulate, cudaStream_t stream);

 private:
  void* handle_ = nullptr;
  void* weights_ = nullptr;  // dequantized weights
  size_t weights_bytes_ = 0;
  void* acts_ = nullptr;     // f16 / bf16 activations
  size_t acts_bytes_ = 0;
};

// Dequantizes a whole tensor to f16 (the Gemm's first step; also used by tests).
void dequantize_to_f16(const DeviceMatrix& w, void* out, cudaStream_t stream);

}  // namespace kvant::cuda
