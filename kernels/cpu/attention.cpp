#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "format/half.h"
#include "kernels/cpu/attention_impl.h"

namespace kvant::cpu {

namespace {

inline float round_even(float v) { return (v + 12582912.0f) - 12582912.0f; }

struct ScalarOps {
  static float dot(const float* a, const float* b, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
  }
  static void axpy(float alpha, const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
  }
  static void scale(float* y, float s, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] *= s;
  }
  static void load_row(KvType type, const uint8_t* row, const uint16_t* scale, int64_t hd, float* out) {
    load_kv_row(type, row, scale, hd, out);
  }
};

}  // namespace

int64_t attention_scratch_floats(const AttentionArgs& a) {
  const int64_t group = a.n_heads / a.n_kv_heads, hd = a.head_dim, P = a.layout->page_tokens;
  // The portable kernel: acc, one row, scores. The AVX-512 one (attention_avx512.cpp):
  // a page of K and V rows, probabilities, acc and the queries.
  return std::max(group * hd + hd + group * P, 2 * P * hd + group * (P + 16) + 2 * group * hd);
}

void hadamard(float* x, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  const float s = 1.0f / std::sqrt(static_cast<float>(n));
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

void store_kv_row(KvType type, const float* x_in, int64_t hd, uint8_t* row, uint16_t* scale, const uint16_t* offset) {
  float rotated[1024];
  const float* x = x_in;
  if (kv_rotated(type, hd) || offset) {
    std::memcpy(rotated, x_in, static_cast<size_t>(hd) * 4);
    if (kv_rotated(type, hd)) hadamard(rotated, hd);
    if (offset)
      for (int64_t i = 0; i < hd; ++i) rotated[i] -= f16_to_f32(offset[i]);
    x = rotated;
  }
  if (type == KvType::f32) {
    std::memcpy(row, x, static_cast<size_t>(hd) * 4);
    return;
  }
  if (type == KvType::f16) {
    auto* o = reinterpret_cast<uint16_t*>(row);
    for (int64_t i = 0; i < hd; ++i) o[i] = f32_to_f16(x[i]);
    return;
  }
  float amax = 0.0f;
  for (int64_t i = 0; i < hd; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  if (type == KvType::q8) {  // symmetric, max|x| -> 127
    *scale = f32_to_f16(amax / 127.0f);
    const float d = f16_to_f32(*scale);
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int64_t i = 0; i < hd; ++i)
      row[i] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(round_even(x[i] * id), -127.0f, 127.0f)));
    return;
  }
  // q4: quants in [-8, 7]; of 16 candidate scales amax/m, m in [5, 8], keep the one with
  // least squared error (with the f16-rounded scale the kernels will use).
  // Quants are round(x · (1/d)), a product rather than a division (the GPU's too).
  auto error_of = [&](float d) {
    const float id = 1.0f / d;
    float err = 0.0f;
    for (int64_t i = 0; i < hd; ++i) {
      const float e = x[i] - d * std::clamp(round_even(x[i] * id), -8.0f, 7.0f);
      err += e * e;
    }
    return err;
  };
  uint16_t best = 0;
  float best_err = INFINITY;
  for (int c = 0; c < 16 && amax > 0.0f; ++c) {
    const uint16_t s = f32_to_f16(amax / (5.0f + 0.2f * static_cast<float>(c)));
    const float d = f16_to_f32(s);
    if (!(d > 0.0f)) continue;
    const float err = error_of(d);
    if (err < best_err) {
      best_err = err;
      best = s;
    }
  }
  *scale = best;
  const float d = f16_to_f32(best);
  const float id = d > 0.0f ? 1.0f / d : 0.0f;
  auto quant = [&](float v) { return static_cast<int>(std::clamp(round_even(v * id), -8.0f, 7.0f)); };
  const int64_t half = hd / 2;
  for (int64_t j = 0; j < half; ++j) row[j] = static_cast<uint8_t>((quant(x[j]) + 8) | ((quant(x[j + half]) + 8) << 4));
}

void load_kv_row(KvType type, const uint8_t* row, const uint16_t* scale, int64_t hd, float* out,
                 const uint16_t* offset) {
  if (offset) {
    load_kv_row(type, row, scale, hd, out);
    for (int64_t i = 0; i < hd; ++i) out[i] += f16_to_f32(offset[i]);
    return;
  }
  switch (type) {
    case KvType::f32:
      std::memcpy(out, row, static_cast<size_t>(hd) * 4);
      return;
    case KvType::f16: {
      const auto* h = reinterpret_cast<const uint16_t*>(row);
      for (int64_t i = 0; i < hd; ++i) out[i] = f16_to_f32(h[i]);
      return;
    }
    case KvType::q8: {
      const float d = f16_to_f32(*scale);
      for (int64_t i = 0; i < hd; ++i) out[i] = d * static_cast<float>(static_cast<int8_t>(row[i]));
      return;
    }
    case KvType::q4: {
      const float d = f16_to_f32(*scale);
      const int64_t half = hd / 2;
      for (int64_t j = 0; j < half; ++j) {
        out[j] = d * static_cast<float>((row[j] & 0x0f) - 8);
        out[j + half] = d * static_cast<float>((row[j] >> 4) - 8);
      }
      return;
    }
  }
}

void set_key_offset(const KvLayout& L, uint8_t* const* pages, uint32_t layer, uint32_t head, int64_t page,
                    const float* first_key) {
  const int64_t P = L.page_tokens, hd = L.head_dim;
  auto* offset = reinterpret_cast<uint16_t*>(pages[page] + L.region_offset(layer, 0, head) + L.offset_row_offset());
  float o[1024];
  if (page == 0) {
    std::memcpy(o, first_key, static_cast<size_t>(hd) * 4);
    if (kv_rotated(L.type, hd)) hadamard(o, hd);
  } else {  // o_(j-1) + (1/j) · mean of page j-1's rows
    const uint8_t* prev = pages[page - 1] + L.region_offset(layer, 0, head);
    const auto* prev_scales = reinterpret_cast<const uint16_t*>(prev + L.scales_offset());
    const auto* prev_offset = reinterpret_cast<const uint16_t*>(prev + L.offset_row_offset());
    float sum[1024] = {}, row[1024];
    for (int64_t i = 0; i < P; ++i) {
      load_kv_row(L.type, prev + i * L.row_bytes(), prev_scales + i, hd, row);
      for (int64_t d = 0; d < hd; ++d) sum[d] += row[d];
    }
    const float w = 1.0f / static_cast<float>(P * page);
    for (int64_t d = 0; d < hd; ++d) o[d] = f16_to_f32(prev_offset[d]) + sum[d] * w;
  }
  for (int64_t d = 0; d < hd; ++d) offset[d] = f32_to_f16(o[d]);
}

void store_kv(const KvLayout& L, uint8_t* const* pages, uint32_t layer, uint32_t kind, uint32_t head, int64_t pos,
              const float* x, bool set_offset) {
  const int64_t P = L.page_tokens, slot = pos % P;
  uint8_t* region = pages[pos / P] + L.region_offset(layer, kind, head);
  const uint16_t* offset = nullptr;
  if (kind == 0 && L.key_offsets()) {
    if (slot == 0 && set_offset) set_key_offset(L, pages, layer, head, pos / P, x);
    offset = reinterpret_cast<const uint16_t*>(region + L.offset_row_offset());
  }
  store_kv_row(L.type, x, L.head_dim, region + slot * L.row_bytes(), reinterpret_cast<uint16_t*>(region + L.scales_offset()) + slot,
               offset);
}

namespace detail {
AttendFn attend_reference() { return attend_group_impl<ScalarOps>; }
}  // namespace detail

void attend_group(const AttentionArgs& a, int64_t kv_head, const float* q, int64_t begin, int64_t end, float* out,
                  float* scratch, SimdLevel level) {
  const detail::AttendFn fn = level == SimdLevel::avx512 ? detail::attend_avx512()
                              : level == SimdLevel::avx2 ? detail::attend_avx2()
                                                         : detail::attend_reference();
  fn(a, kv_head, q, begin, end, out, scratch);
}

}  // namespace kvant::cpu
