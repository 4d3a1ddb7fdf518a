// Attention over the paged, possibly quantized KV cache (kernels/layout.h), with a
// streaming softmax: positions are visited a page at a time, and each page rescales the
// running sums once (flash-attention at page granularity).
#pragma once

#include <cstdint>

#include "kernels/cpu/cpu_features.h"
#include "kernels/layout.h"

namespace kvant::cpu {

struct AttentionArgs {
  const KvLayout* layout = nullptr;
  uint32_t layer = 0;               // layer index within the layout
  uint8_t* const* pages = nullptr;  // the sequence's pages: pages[i] holds positions [i*P, (i+1)*P)
  int64_t n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 1.0f;               // softmax(q·k · scale)
};

// Floats of scratch that attend_group needs.
int64_t attention_scratch_floats(const AttentionArgs& a);

// For the query heads of KV head `kv_head` (GQA group), writes
//   out[h] = Σ_{p in [begin, end)} softmax_p(q[h] · k_p · scale) · v_p
// q and out hold all n_heads × head_dim values of one token.
void attend_group(const AttentionArgs& a, int64_t kv_head, const float* q, int64_t begin, int64_t end, float* out,
                  float* scratch, SimdLevel level = active_simd_level());

// Whether rows of this KV type hold Hadamard-rotated vectors (see kernels/layout.h).
inline bool kv_rotated(KvType type, int64_t head_dim) {
  return type == KvType::q4 && head_dim >= 16 && (head_dim & (head_dim - 1)) == 0;
}
// In-place normalized Walsh-Hadamard transform (its own inverse); n a power of two.
void hadamard(float* x, int64_t n);

// Encodes one key or value row (head_dim floats) into its slot: `row` in the page's
// rows, `scale` its f16 scale (unused for f16). `offset`: the page's key offset row for
// q4 keys (kernels/layout.h), stored relative to it; null otherwise.
void store_kv_row(KvType type, const float* x, int64_t head_dim, uint8_t* row, uint16_t* scale,
                  const uint16_t* offset = nullptr);
// Decodes one row back to floats (the reference the SIMD loaders are tested against), in
// the rows' (rotated) domain; `offset` as for store_kv_row.
void load_kv_row(KvType type, const uint8_t* row, const uint16_t* scale, int64_t head_dim, float* out,
                 const uint16_t* offset = nullptr);
// Writes the key (kind 0) or value (kind 1) of position `pos`, head_dim floats, into
// its slot of the sequence's pages (`pages[i]` holds positions [i·P, (i+1)·P)) for
// (layer, KV head). q4 keys are stored against their page's offset row, which this sets
// first when `pos` starts a page and `set_offset`; the page before must be complete.
void store_kv(const KvLayout& layout, uint8_t* const* pages, uint32_t layer, uint32_t kind, uint32_t head,
              int64_t pos, const float* x, bool set_offset = true);
// Sets the key offset row of page `page` (kernels/layout.h) for (layer, KV head):
// page 0's from its first key `first_key` (RoPE applied; unused for later pages), a
// later one's from the page before it, which must be complete.
void set_key_offset(const KvLayout& layout, uint8_t* const* pages, uint32_t layer, uint32_t head, int64_t page,
                    const float* first_key);

namespace detail {
using AttendFn = void (*)(const AttentionArgs&, int64_t, const float*, int64_t, int64_t, float*, float*);
AttendFn attend_reference();
AttendFn attend_avx2();
AttendFn attend_avx512();
}  // namespace detail

}  // namespace kvant::cpu
