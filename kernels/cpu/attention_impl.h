// The attention kernel, written once over an ISA's vector helpers `S` (dot, axpy,
// scale, row loaders). Instantiated by attention.cpp (scalar), attention_avx2.cpp and
// attention_avx512.cpp, each compiled for its ISA.
#pragma once

#include <algorithm>
#include <cmath>

#include "kernels/cpu/attention.h"

namespace kvant::cpu::detail {

// Positions [p0, p0 + n) of one page (n up to the page's end or `end`) and KV head g's
// K and V rows and scales there, starting at the page slot of p0.
struct PageSpan {
  int64_t slot0, n;
  const uint8_t *k, *v;                // the page's K and V regions
  const uint16_t *k_scale, *v_scale;   // their per-row scales
  const uint16_t* k_offset;            // the keys' offset row (q4), else null
};
inline PageSpan page_span(const AttentionArgs& a, int64_t g, int64_t p0, int64_t end) {
  const KvLayout& L = *a.layout;
  const int64_t P = L.page_tokens, slot0 = p0 % P;
  const uint8_t* k = a.pages[p0 / P] + L.region_offset(a.layer, 0, static_cast<uint32_t>(g));
  const uint8_t* v = a.pages[p0 / P] + L.region_offset(a.layer, 1, static_cast<uint32_t>(g));
  return {slot0, std::min(end - p0, P - slot0), k, v, reinterpret_cast<const uint16_t*>(k + L.scales_offset()),
          reinterpret_cast<const uint16_t*>(v + L.scales_offset()),
          L.key_offsets() ? reinterpret_cast<const uint16_t*>(k + L.offset_row_offset()) : nullptr};
}

// The score every key of a page shares through its offset row: query · offset (0 without one).
template <class S>
float offset_score(const PageSpan& pg, const float* query, int64_t hd, float* row) {
  if (!pg.k_offset) return 0.0f;
  S::load_row(KvType::f16, reinterpret_cast<const uint8_t*>(pg.k_offset), nullptr, hd, row);
  return S::dot(query, row, hd);
}

// out[h] = acc[i] / l[i] for the group's query heads h = g·group + i, rotated back for
// rotated (q4) KV rows.
inline void write_attention_output(const float* acc, const float* l, int64_t g, int64_t group, int64_t hd,
                                   bool rotated, float* out) {
  for (int64_t i = 0; i < group; ++i) {
    const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
    float* o = out + (g * group + i) * hd;
    for (int64_t d = 0; d < hd; ++d) o[d] = acc[i * hd + d] * inv;
    if (rotated) hadamard(o, hd);
  }
}

template <class S>
void attend_group_impl(const AttentionArgs& a, int64_t g, const float* q, int64_t begin, int64_t end, float* out,
                       float* scratch) {
  const KvLayout& L = *a.layout;
  const int64_t hd = a.head_dim, group = a.n_heads / a.n_kv_heads, P = L.page_tokens;
  float* acc = scratch;                 // group × hd
  float* row = acc + group * hd;        // hd: one dequantized K or V row
  float* scores = row + hd;             // group × P
  float m[64], l[64];                   // group ≤ 64
  // Rotated KV rows: attend with the rotated query, rotate the result back.
  const bool rotated = kv_rotated(L.type, hd);
  float q_rot[64 * 256];
  if (rotated) {
    for (int64_t i = 0; i < group; ++i) {
      std::copy(q + (g * group + i) * hd, q + (g * group + i + 1) * hd, q_rot + i * hd);
      hadamard(q_rot + i * hd, hd);
    }
  }
  auto query = [&](int64_t i) { return rotated ? q_rot + i * hd : q + (g * group + i) * hd; };
  for (int64_t i = 0; i < group; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
    for (int64_t d = 0; d < hd; ++d) acc[i * hd + d] = 0.0f;
  }
  const uint64_t rb = L.row_bytes();
  for (int64_t p0 = begin; p0 < end;) {
    const PageSpan pg = page_span(a, g, p0, end);
    const int64_t n = pg.n, slot0 = pg.slot0;
    for (int64_t i = 0; i < group; ++i) {
      const float shared = offset_score<S>(pg, query(i), hd, row);
      for (int64_t p = 0; p < n; ++p) scores[i * P + p] = shared;
    }
    for (int64_t p = 0; p < n; ++p) {
      S::load_row(L.type, pg.k + (slot0 + p) * rb, pg.k_scale + slot0 + p, hd, row);
      for (int64_t i = 0; i < group; ++i) scores[i * P + p] = (scores[i * P + p] + S::dot(query(i), row, hd)) * a.scale;
    }
    for (int64_t i = 0; i < group; ++i) {
      float* s = scores + i * P;
      float mb = m[i];
      for (int64_t p = 0; p < n; ++p) mb = std::fmax(mb, s[p]);
      const float correction = std::exp(m[i] - mb);  // 0 on the first page (m = -inf)
      m[i] = mb;
      float sum = 0.0f;
      for (int64_t p = 0; p < n; ++p) {
        s[p] = std::exp(s[p] - mb);
        sum += s[p];
      }
      l[i] = l[i] * correction + sum;
      S::scale(acc + i * hd, correction, hd);
    }
    for (int64_t p = 0; p < n; ++p) {
      S::load_row(L.type, pg.v + (slot0 + p) * rb, pg.v_scale + slot0 + p, hd, row);
      for (int64_t i = 0; i < group; ++i) S::axpy(scores[i * P + p], row, acc + i * hd, hd);
    }
    p0 += n;
  }
  write_attention_output(acc, l, g, group, hd, rotated, out);
}

}  // namespace kvant::cpu::detail
