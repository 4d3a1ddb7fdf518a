// Byte layouts shared by the CPU and CUDA kernels: quantized weight blocks (defined by
// the file format, format/FORMAT.md section 6) and KV-cache pages. A page written by
// one backend is read by the other unchanged, and a saved session holds pages as is.
#pragma once

#include <cstdint>

#include "format/dtype.h"
#include "format/kv_type.h"

#if defined(__CUDACC__)
#define KVANT_HOST_DEVICE __host__ __device__
#else
#define KVANT_HOST_DEVICE
#endif

namespace kvant {

// ---- KV pages ------------------------------------------------------------------------
//
// A page holds `page_tokens` consecutive positions of one sequence, for a range of
// layers [0, n_layers) of the backend that owns it (a model split between GPU and CPU
// has a page pool on each side, with the same page ids and the same layout, each
// holding its own layers).
//
// Inside a page, regions follow each other in the order (layer, kind, kv_head), with
// kind 0 = keys, 1 = values. A region is
//
//     rows:   page_tokens rows of row_bytes, row i = position (page_start + i)
//     scales: page_tokens f16 scales (q8 and q4 only)
//     offset: head_dim f16 values, padded to a multiple of 64 bytes (q4 keys only)
//
// Row encodings (head_dim = d elements):
//   f32: d little-endian binary32 values (exact; a reference for tests) row_bytes = 4d
//   f16: d little-endian binary16 values                               row_bytes = 2d
//   q8:  d int8 quants q; element = scale * q, q in [-127, 127]          row_bytes = d
//   q4:  d/2 bytes; byte j holds element j in its low nibble and element j + d/2 in
//        its high nibble, each stored as q + 8 with q in [-8, 7]       row_bytes = d/2
// One f16 scale per token and head. q8: max|x| / 127. q4: of the 16 scales max|x| / m,
// m = 5.0, 5.2, ..., 8.0, the one with least squared error.
//
// q4 rows hold the Walsh-Hadamard rotation H·x of keys and values (H the normalized
// Sylvester matrix of order d, its own inverse; d a power of two >= 16, else no
// rotation). Attention uses q·k = (Hq)·(Hk) and rotates its output back; spreading the
// few large channels of RoPE'd keys over all of them is what makes 4 bits workable
// (SmolLM2-135M on a 7.6k-token text: perplexity +47% without the rotation, +5% with).
//
// q4 keys are stored relative to their page's offset row o (in the rows' domain):
// key = o + scale * q. Keys share a large component across positions, which a
// per-token scale would otherwise spend its 16 levels on. Page 0's o is its first key;
// page j >= 1's o is the mean of the keys at positions [0, 32j) as the cache holds them,
//     o_j = o_(j-1) + (1/j) * mean over page j-1's rows of (scale * q),
// computed in f32 from the stored f16 o_(j-1) and rounded to f16 when the page's first
// position is written (so each backend derives it from the pages alone, and a page's
// keys are written in position order). SmolLM2-135M, first 8,192 tokens of the
// evaluation text: INT4 KV perplexity +4.5% over F16 KV without offsets, +2.1% with.
//
// With page_tokens = 32 every region, row block and scale block starts at a multiple
// of 64 bytes for every even d >= 16.

inline constexpr uint32_t kPageTokens = 32;

struct KvLayout {
  KvType type = KvType::f16;
  uint32_t n_layers = 0;
  uint32_t n_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t page_tokens = kPageTokens;

  KVANT_HOST_DEVICE uint64_t row_bytes() const {
    switch (type) {
      case KvType::f32: return 4ull * head_dim;
      case KvType::f16: return 2ull * head_dim;
      case KvType::q8: return head_dim;
      case KvType::q4: return head_dim / 2;
    }
    return 0;
  }
  KVANT_HOST_DEVICE bool quantized() const { return type == KvType::q8 || type == KvType::q4; }
  // Whether key regions end with an offset row (q4).
  KVANT_HOST_DEVICE bool key_offsets() const { return type == KvType::q4; }
  KVANT_HOST_DEVICE uint64_t offset_row_bytes() const { return key_offsets() ? (2ull * head_dim + 63) / 64 * 64 : 0; }
  KVANT_HOST_DEVICE uint64_t region_bytes(uint32_t kind) const {
    return page_tokens * row_bytes() + (quantized() ? 2ull * page_tokens : 0) + (kind == 0 ? offset_row_bytes() : 0);
  }
  KVANT_HOST_DEVICE uint64_t page_bytes() const { return (region_bytes(0) + region_bytes(1)) * n_layers * n_kv_heads; }
  // Offset of the region (layer, kind, head) inside a page.
  KVANT_HOST_DEVICE uint64_t region_offset(uint32_t layer, uint32_t kind, uint32_t head) const {
    const uint64_t keys = region_bytes(0) * n_kv_heads;
    return layer * (keys + region_bytes(1) * n_kv_heads) + kind * keys + head * region_bytes(kind);
  }
  // Offsets of the scales and of the offset row inside a region.
  KVANT_HOST_DEVICE uint64_t scales_offset() const { return page_tokens * row_bytes(); }
  KVANT_HOST_DEVICE uint64_t offset_row_offset() const { return scales_offset() + 2ull * page_tokens; }
};

}  // namespace kvant
