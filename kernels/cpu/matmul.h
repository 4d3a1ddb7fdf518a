// Weight matrix × activations on the CPU: decode GEMV and prefill GEMM for every
// .kvant weight type. q8/q4 weights multiply int8 activations quantized on the fly
// (VNNI on AVX-512, maddubs on AVX2); f32/f16/bf16 weights multiply f32 activations.
// Each SIMD level is tested against the scalar reference (tests/matmul_test.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "format/dtype.h"
#include "kernels/cpu/cpu_features.h"

namespace kvant::cpu {

// A weight matrix [rows, cols] in its .kvant layout (format/FORMAT.md section 6).
struct WeightMatrix {
  DType dtype = DType::f32;
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;

  const uint16_t* scales() const {  // q8 / q4: the scale region
    return reinterpret_cast<const uint16_t*>(
        data + quant_region_bytes(dtype, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols)));
  }
  bool quantized() const { return dtype_is_quantized(dtype); }
};

// Activations quantized for q8/q4 weights: one record per token, act_record_bytes(k)
// bytes (a multiple of 64), laid out as
//   int8  q[k]          values in [-127, 127], x ≈ scale_b · q within block b of 32
//   uint8 qu[k]         q + 128: the unsigned operand of VNNI dot products with q8 weights
//   int8  lo[k]         the rounding residual in 1/256 steps: x ≈ scale_b · (q + lo/256)
//   float scale[k/32]
//   float corr[k/32]    8 · scale_b · Σ_{j in b} (q_j + lo_j/256): removes the +8 offset of
//                       q4 nibbles
// Quantized weights multiply q + lo/256: 16-bit activations as two int8 dot products,
// so rounding the activations adds no error beside the weights' own (the GPU's
// prefill multiplies f16 activations; CPU and GPU then agree). k must be a multiple of 64.
// Blocks that cannot be quantized: a block holding Inf or NaN gets scale and corr NaN and
// zero quants, so every product it enters is NaN, as in float arithmetic; a block whose
// scale max|x| / 127 would be subnormal (its inverse overflows) is quantized as zero.
// Every implementation (and the CUDA one) does the same.
size_t act_record_bytes(int64_t k);
void quantize_acts(const float* x, int64_t k, uint8_t* record, SimdLevel level = active_simd_level());

// Activations rearranged for the many-token quantized kernel (AVX-512), one block of
// packed_acts_bytes(k) per token, written by pack_acts from the token's record. Per group
// of 16 activation blocks (512 values; the last group padded with zero values):
//   uint8 hi[8][64]   q + 128: vector s, lane b (bytes 4b..4b+3) holds values 4s..4s+3 of block b
//   uint8 lo[8][64]   lo + 128, arranged the same way
//   float scale[16]   the block's scale / 256 (0 for padding)
// With this arrangement one lane of an int8 dot product accumulates one block for all 32
// of its values (see matmul_avx512.cpp). Used where a matmul sees kPackedMinTokens tokens
// or more: with fewer, rearranging the weights costs what it saves (llama-1b q4 on the
// 2-core VM, tok/s packed / row tiles: 2 tokens 72-77 / 76, 3: 108-114 / 103-109,
// 4: 130-136 / 108-110, 8: 187-192 / 130-131, 16: 261-265 / 157-168).
inline constexpr int64_t kPackedMinTokens = 4;
inline constexpr int64_t kPackedGroupBlocks = 16;
inline constexpr size_t kPackedGroupBytes = 2 * 8 * 64 + kPackedGroupBlocks * 4;  // hi, lo, scale
size_t packed_acts_bytes(int64_t k);
void pack_acts(const uint8_t* record, int64_t k, uint8_t* packed, SimdLevel level = active_simd_level());
// Whether matmul at `level` reads packed activations (MatmulArgs::xp): only then are they
// worth writing.
bool reads_packed_acts(SimdLevel level = active_simd_level());

// Bytes of the quantized activations of `tokens` tokens: the records, then, where
// tokens >= kPackedMinTokens, their packed form (at tokens * act_record_bytes(k)).
size_t act_buffer_bytes(int64_t tokens, int64_t k);
// Token t of such a buffer: its record, and its packed form too where `pack` (which
// needs tokens >= kPackedMinTokens).
void quantize_token(const float* x, int64_t k, int64_t tokens, int64_t t, uint8_t* buffer, bool pack,
                    SimdLevel level = active_simd_level());
// The packed form in such a buffer, or null where it has none.
const uint8_t* packed_acts_in(const uint8_t* buffer, int64_t tokens, int64_t k);

struct ActRecord {  // typed view of one record
  const int8_t* q;
  const uint8_t* qu;
  const int8_t* lo;
  const float* scale;
  const float* corr;
  ActRecord(const uint8_t* record, int64_t k)
      : q(reinterpret_cast<const int8_t*>(record)),
        qu(record + k),
        lo(reinterpret_cast<const int8_t*>(record + 2 * k)),
        scale(reinterpret_cast<const float*>(record + 3 * k)),
        corr(reinterpret_cast<const float*>(record + 3 * k) + k / 32) {}
};

struct MatmulArgs {
  WeightMatrix w;
  const float* x = nullptr;     // f32 activations, n_tokens rows of w.cols (float weights)
  int64_t ldx = 0;
  const uint8_t* xq = nullptr;  // quantized records, n_tokens of act_record_bytes (q8/q4)
  const uint8_t* xp = nullptr;  // optional: the same tokens packed (pack_acts), for kernels that use them
  int64_t n_tokens = 0;
  float* y = nullptr;           // y[t * ldy + (r - y_row0)]
  int64_t ldy = 0;
  int64_t y_row0 = 0;           // the row stored at y[0] (a chunk of rows into scratch)
  bool accumulate = false;      // y += W x (a fused residual) instead of y = W x
};

// Computes output rows [r0, r1) for every token. Threads split the rows.
void matmul(const MatmulArgs& a, int64_t r0, int64_t r1, SimdLevel level = active_simd_level());

namespace detail {
using MatmulFn = void (*)(const MatmulArgs&, int64_t, int64_t);
using QuantizeActsFn = void (*)(const float*, int64_t, uint8_t*);
using PackActsFn = void (*)(const uint8_t*, int64_t, uint8_t*);
// Block b of a record as quantize_acts leaves a block holding Inf or NaN.
void write_nonfinite_block(uint8_t* record, int64_t k, int64_t b);
// The block scale for max |x| = amax (finite): amax / 127, or 0 where that is subnormal.
inline float act_block_scale(float amax) {
  const float d = amax / 127.0f;
  return d >= std::numeric_limits<float>::min() ? d : 0.0f;
}
void pack_acts_portable(const uint8_t* record, int64_t k, uint8_t* packed);  // the definition (matmul.cpp)
struct MatmulKernels {
  QuantizeActsFn quantize_acts;
  PackActsFn pack_acts;
  bool reads_packed_acts;
  MatmulFn by_dtype[kDTypeCount];
};
const MatmulKernels& matmul_kernels_reference();
const MatmulKernels& matmul_kernels_avx2();
const MatmulKernels& matmul_kernels_avx512();
}  // namespace detail

}  // namespace kvant::cpu
