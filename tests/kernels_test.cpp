// Every SIMD level of the matmul and attention kernels against the scalar reference,
// on random inputs of awkward sizes (tails, one row, one token, odd token counts, many
// pages), and the KV row codecs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "format/half.h"
#include "format/model_config.h"
#include "format/quant.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "tests/test_util.h"

namespace kvant {
namespace {

using cpu::SimdLevel;

// A random weight matrix in `dtype`'s layout.
std::vector<uint8_t> make_weights(DType dtype, int64_t rows, int64_t cols, uint64_t seed) {
  const auto x = test::gaussian(static_cast<size_t>(rows * cols), seed, 0.05f);
  std::vector<uint8_t> bytes(*tensor_bytes(dtype, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols)));
  auto* scales = reinterpret_cast<uint16_t*>(bytes.data() + quant_region_bytes(dtype, rows, cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x.data() + r * cols;
    switch (dtype) {
      case DType::f32: std::memcpy(bytes.data() + r * cols * 4, row, static_cast<size_t>(cols) * 4); break;
      case DType::f16:
      case DType::bf16:
        for (int64_t k = 0; k < cols; ++k) {
          const uint16_t h = dtype == DType::f16 ? f32_to_f16(row[k]) : f32_to_bf16(row[k]);
          std::memcpy(bytes.data() + (r * cols + k) * 2, &h, 2);
        }
        break;
      case DType::q8:
        quantize_row_q8(row, cols, reinterpret_cast<int8_t*>(bytes.data()) + r * cols, scales + r * cols / 32);
        break;
      case DType::q4:
        quantize_row_q4(row, cols, bytes.data() + r * cols / 2, scales + r * cols / 32);
        break;
    }
  }
  return bytes;
}

// Blocks 1-4 of x: one holding +Inf, one NaN, one -Inf, one of subnormal values.
void add_unquantizable_blocks(std::vector<float>& x) {
  x[32 + 7] = INFINITY;
  x[64 + 31] = NAN;
  x[96] = -INFINITY;
  for (int i = 0; i < 32; ++i) x[static_cast<size_t>(128 + i)] = (i % 2 ? 1e-40f : -3e-41f) * static_cast<float>(i);
}

// Activations of `tokens` tokens as the executor's quantize op leaves them: records,
// then (from kPackedMinTokens tokens) their packed form.
std::vector<uint8_t> quantize_tokens(const float* x, int64_t tokens, int64_t k) {
  std::vector<uint8_t> out(cpu::act_buffer_bytes(tokens, k));
  for (int64_t t = 0; t < tokens; ++t)
    cpu::quantize_token(x + t * k, k, tokens, t, out.data(), tokens >= cpu::kPackedMinTokens, SimdLevel::scalar);
  return out;
}

TEST(Kernels, QuantizeActsIsBitIdenticalOnEveryLevel) {
  for (int64_t k : {64, 576, 2048, 8256}) {
    auto x = test::gaussian(static_cast<size_t>(k), static_cast<uint64_t>(k), 3.0f);
    for (int i = 0; i < 32; ++i) x[static_cast<size_t>(i)] = 0.0f;  // an all-zero block
    if (k >= 576) add_unquantizable_blocks(x);
    std::vector<uint8_t> ref(cpu::act_record_bytes(k));
    cpu::quantize_acts(x.data(), k, ref.data(), SimdLevel::scalar);
    for (SimdLevel level : cpu::supported_simd_levels()) {
      std::vector<uint8_t> got(ref.size(), 0xee);
      cpu::quantize_acts(x.data(), k, got.data(), level);
      EXPECT_EQ(0, std::memcmp(got.data(), ref.data(), static_cast<size_t>(3 * k + k / 32 * 8)))
          << "k " << k << " " << cpu::simd_level_name(level);
      // The packed form (full and partial groups of 16 blocks), byte for byte too.
      std::vector<uint8_t> packed_ref(cpu::packed_acts_bytes(k)), packed(packed_ref.size(), 0xee);
      cpu::pack_acts(ref.data(), k, packed_ref.data(), SimdLevel::scalar);
      cpu::pack_acts(ref.data(), k, packed.data(), level);
      EXPECT_EQ(packed, packed_ref) << "k " << k << " " << cpu::simd_level_name(level);
    }
  }
}

TEST(Kernels, MatmulMatchesReferenceOnEveryLevel) {
  struct Shape {
    int64_t rows, cols, tokens;
  };
  // From cpu::kPackedMinTokens tokens on, q8/q4 take the packed path: full and partial
  // groups of 16 blocks (1600 = 3 groups + 2 blocks), row and token tails.
  const Shape shapes[] = {{1, 64, 1},       {5, 64, 3},    {7, 576, 1},     {13, 576, 4},  {33, 2048, 7},
                          {9, 4160, 2},     {64, 1536, 16}, {37, 1600, 40}, {6, 64, 17},   {70, 576, 16}};
  for (DType dtype : {DType::f32, DType::f16, DType::bf16, DType::q8, DType::q4}) {
    for (const Shape s : shapes) {
      const auto w = make_weights(dtype, s.rows, s.cols, static_cast<uint64_t>(s.rows * 131 + s.cols));
      const auto x = test::gaussian(static_cast<size_t>(s.tokens * s.cols), 7 + static_cast<uint64_t>(s.tokens));
      const std::vector<uint8_t> xq = quantize_tokens(x.data(), s.tokens, s.cols);
      cpu::MatmulArgs a;
      a.w = {dtype, s.rows, s.cols, w.data()};
      a.x = x.data();
      a.ldx = s.cols;
      a.xq = xq.data();
      a.xp = cpu::packed_acts_in(xq.data(), s.tokens, s.cols);
      a.n_tokens = s.tokens;
      a.ldy = s.rows;
      std::vector<float> ref(static_cast<size_t>(s.rows * s.tokens));
      a.y = ref.data();
      cpu::matmul(a, 0, s.rows, SimdLevel::scalar);
      double scale = 0;
      for (float v : ref) scale = std::max(scale, static_cast<double>(std::fabs(v)));
      for (SimdLevel level : cpu::supported_simd_levels()) {
        // Split the rows unevenly, as threads would, and check accumulation too.
        std::vector<float> got(ref.size(), 1.0f);
        a.y = got.data();
        a.accumulate = false;
        cpu::matmul(a, 0, s.rows / 3, level);
        cpu::matmul(a, s.rows / 3, s.rows, level);
        for (size_t i = 0; i < got.size(); ++i)
          ASSERT_NEAR(got[i], ref[i], 2e-5 * scale + 1e-6)
              << dtype_name(dtype) << " [" << s.rows << "x" << s.cols << "] x" << s.tokens << " at "
              << cpu::simd_level_name(level) << " element " << i;
        a.accumulate = true;
        cpu::matmul(a, 0, s.rows, level);
        for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], 2 * ref[i], 4e-5 * scale + 1e-6);
      }
    }
  }
}

// A block holding Inf or NaN quantizes to scale NaN and zero quants, so products with it
// are NaN as in float arithmetic (never an integer overflow); a block of subnormal
// values, whose scale's inverse would overflow, quantizes to zero.
TEST(Kernels, UnquantizableActivationBlocksGiveNaNOrZero) {
  const int64_t k = 256, rows = 5;
  for (SimdLevel level : cpu::supported_simd_levels()) {
    for (int block : {1, 2, 3, 4}) {
      auto x = test::gaussian(static_cast<size_t>(k), 3);
      auto bad = x;
      add_unquantizable_blocks(bad);
      for (int b = 1; b <= 4; ++b)  // only block `block` is unquantizable
        if (b != block) std::copy_n(x.begin() + b * 32, 32, bad.begin() + b * 32);
      std::vector<uint8_t> rec_bytes(cpu::act_record_bytes(k));
      cpu::quantize_acts(bad.data(), k, rec_bytes.data(), level);
      const cpu::ActRecord rec(rec_bytes.data(), k);
      for (int i = 0; i < 32; ++i) {
        EXPECT_EQ(rec.q[block * 32 + i], 0);
        EXPECT_EQ(rec.lo[block * 32 + i], 0);
        EXPECT_EQ(rec.qu[block * 32 + i], 128);
      }
      if (block == 4) {
        EXPECT_EQ(rec.scale[block], 0.0f);
        EXPECT_EQ(rec.corr[block], 0.0f);
      } else {
        EXPECT_TRUE(std::isnan(rec.scale[block])) << cpu::simd_level_name(level) << " block " << block;
        EXPECT_TRUE(std::isnan(rec.corr[block]));
      }
      EXPECT_FALSE(std::isnan(rec.scale[0]));
      // One token (GEMV), and the same record as 20 tokens (the packed path).
      const int64_t many = 20;
      std::vector<float> xs;
      for (int64_t t = 0; t < many; ++t) xs.insert(xs.end(), bad.begin(), bad.end());
      const std::vector<uint8_t> xq = quantize_tokens(xs.data(), many, k);
      for (DType dtype : {DType::q8, DType::q4}) {
        const auto w = make_weights(dtype, rows, k, 9);
        for (int64_t tokens : {int64_t{1}, many}) {
          cpu::MatmulArgs a;
          a.w = {dtype, rows, k, w.data()};
          a.xq = tokens == 1 ? rec_bytes.data() : xq.data();
          a.xp = tokens == 1 ? nullptr : cpu::packed_acts_in(xq.data(), tokens, k);
          a.n_tokens = tokens;
          a.ldy = rows;
          std::vector<float> y(static_cast<size_t>(rows * tokens));
          a.y = y.data();
          cpu::matmul(a, 0, rows, level);
          for (float v : y) {
            if (block == 4) EXPECT_TRUE(std::isfinite(v)) << dtype_name(dtype) << " " << cpu::simd_level_name(level);
            else EXPECT_TRUE(std::isnan(v)) << dtype_name(dtype) << " " << cpu::simd_level_name(level) << " block " << block;
          }
        }
      }
    }
  }
}

// The activation record's two bytes per value: q alone is within half a step
// (scale/2) of x; q + lo/256 within 1/256 of a step, as q8 weights see it.
TEST(Kernels, QuantizedActivationsCarryAResidualByte) {
  const int64_t k = 2048;
  auto x = test::gaussian(static_cast<size_t>(k), 11, 2.0f);
  x[5] = 40.0f;  // an outlier: the block's other values get few of q's steps
  std::vector<uint8_t> rec_bytes(cpu::act_record_bytes(k));
  cpu::quantize_acts(x.data(), k, rec_bytes.data(), SimdLevel::scalar);
  const cpu::ActRecord rec(rec_bytes.data(), k);
  double worst_q = 0, worst_lo = 0;
  for (int64_t i = 0; i < k; ++i) {
    const double step = rec.scale[i / 32];
    worst_q = std::max(worst_q, std::fabs(x[i] - step * rec.q[i]) / step);
    worst_lo = std::max(worst_lo, std::fabs(x[i] - step * (rec.q[i] + rec.lo[i] / 256.0)) / step);
  }
  EXPECT_LE(worst_q, 0.5 + 1e-6);
  EXPECT_LE(worst_lo, 1.0 / 256 + 1e-6);  // lo is clamped to ±127, so not quite half
  EXPECT_GT(worst_q, 0.4);  // the residual is needed
}

// The quantized matmul computes exactly the integer dot products it claims: compare
// with a double-precision evaluation of the dequantized operands.
TEST(Kernels, QuantizedMatmulIsTheDotOfDequantizedOperands) {
  const int64_t rows = 3, cols = 256;
  for (DType dtype : {DType::q8, DType::q4}) {
    const auto w = make_weights(dtype, rows, cols, 5);
    const auto x = test::gaussian(cols, 6);
    std::vector<uint8_t> xq(cpu::act_record_bytes(cols));
    cpu::quantize_acts(x.data(), cols, xq.data(), SimdLevel::scalar);
    const cpu::ActRecord rec(xq.data(), cols);
    cpu::MatmulArgs a;
    a.w = {dtype, rows, cols, w.data()};
    a.xq = xq.data();
    a.n_tokens = 1;
    std::vector<float> y(rows);
    a.y = y.data();
    a.ldy = rows;
    cpu::matmul(a, 0, rows, cpu::active_simd_level());
    std::vector<float> wrow(cols);
    for (int64_t r = 0; r < rows; ++r) {
      cpu::dequantize_row(dtype, w.data(), rows, cols, r, wrow.data());
      double want = 0;
      // The activations with their residual byte: x ≈ scale · (q + lo/256).
      for (int64_t k = 0; k < cols; ++k)
        want += static_cast<double>(wrow[k]) * rec.scale[k / 32] * (rec.q[k] + rec.lo[k] / 256.0);
      EXPECT_NEAR(y[r], want, 1e-4 * std::fabs(want) + 1e-5) << dtype_name(dtype) << " row " << r;
    }
  }
}

TEST(Kernels, KvRowsRoundTrip) {
  for (int64_t hd : {16, 64, 128, 96}) {
    const auto x = test::gaussian(static_cast<size_t>(hd), static_cast<uint64_t>(hd), 2.0f);
    double norm = 0;
    for (float v : x) norm += v * v;
    for (KvType type : {KvType::f32, KvType::f16, KvType::q8, KvType::q4}) {
      std::vector<uint8_t> row(static_cast<size_t>(hd) * 4);
      uint16_t scale = 0;
      cpu::store_kv_row(type, x.data(), hd, row.data(), &scale);
      std::vector<float> back(static_cast<size_t>(hd));
      cpu::load_kv_row(type, row.data(), &scale, hd, back.data());
      if (cpu::kv_rotated(type, hd)) cpu::hadamard(back.data(), hd);
      double err = 0;
      for (int64_t i = 0; i < hd; ++i) err += (back[i] - x[i]) * static_cast<double>(back[i] - x[i]);
      const double rel = std::sqrt(err / norm);
      const double bound = type == KvType::f32 ? 0 : type == KvType::f16 ? 1e-3 : type == KvType::q8 ? 0.01 : 0.25;
      EXPECT_LE(rel, bound) << kv_type_name(type) << " head_dim " << hd;
    }
  }
}

// q4 keys are stored against their page's offset row (kernels/layout.h): page 0's is its
// first key, page j's the mean of the keys before it as the cache holds them; a key
// decodes to offset + row, with an error relative to its own part, not the common one.
TEST(Kernels, Q4KeysAreStoredAgainstThePageOffset) {
  for (int64_t hd : {64, 96}) {
    const KvLayout L{KvType::q4, 1, 1, static_cast<uint32_t>(hd), kPageTokens};
    const int64_t n = 3 * kPageTokens + 5, pages_n = 4;
    std::vector<uint8_t> memory(static_cast<size_t>(pages_n * L.page_bytes()));
    std::vector<uint8_t*> pages;
    for (int64_t p = 0; p < pages_n; ++p) pages.push_back(memory.data() + p * L.page_bytes());
    const auto common = test::gaussian(static_cast<size_t>(hd), 17, 8.0f);
    std::vector<std::vector<float>> keys;
    for (int64_t pos = 0; pos < n; ++pos) {
      auto k = test::gaussian(static_cast<size_t>(hd), 100 + static_cast<uint64_t>(pos));
      for (int64_t i = 0; i < hd; ++i) k[static_cast<size_t>(i)] += common[static_cast<size_t>(i)];
      cpu::store_kv(L, pages.data(), 0, 0, 0, pos, k.data());
      keys.push_back(k);
    }
    auto offset_of = [&](int64_t page) {
      const auto* o = reinterpret_cast<const uint16_t*>(pages[static_cast<size_t>(page)] + L.region_offset(0, 0, 0) +
                                                        L.offset_row_offset());
      std::vector<float> v(static_cast<size_t>(hd));
      for (int64_t i = 0; i < hd; ++i) v[static_cast<size_t>(i)] = f16_to_f32(o[i]);
      if (cpu::kv_rotated(KvType::q4, hd)) cpu::hadamard(v.data(), hd);
      return v;
    };
    // Decoded keys: error relative to the key's own (non-common) part.
    std::vector<float> mean(static_cast<size_t>(hd), 0.0f);
    double err = 0, own = 0;
    for (int64_t pos = 0; pos < n; ++pos) {
      const uint8_t* region = pages[static_cast<size_t>(pos / kPageTokens)] + L.region_offset(0, 0, 0);
      std::vector<float> back(static_cast<size_t>(hd));
      cpu::load_kv_row(KvType::q4, region + (pos % kPageTokens) * L.row_bytes(),
                       reinterpret_cast<const uint16_t*>(region + L.scales_offset()) + pos % kPageTokens, hd, back.data(),
                       reinterpret_cast<const uint16_t*>(region + L.offset_row_offset()));
      if (cpu::kv_rotated(KvType::q4, hd)) cpu::hadamard(back.data(), hd);
      for (int64_t i = 0; i < hd; ++i) {
        const auto u = static_cast<size_t>(i);
        err += (back[u] - keys[static_cast<size_t>(pos)][u]) * static_cast<double>(back[u] - keys[static_cast<size_t>(pos)][u]);
        own += (keys[static_cast<size_t>(pos)][u] - common[u]) * static_cast<double>(keys[static_cast<size_t>(pos)][u] - common[u]);
      }
      // Page p's offset row is the mean of the decoded keys of positions [0, 32p).
      if (pos % kPageTokens == 0) {
        const auto o = offset_of(pos / kPageTokens);
        for (int64_t i = 0; i < hd; ++i) {
          const float want = pos == 0 ? keys[0][static_cast<size_t>(i)] : mean[static_cast<size_t>(i)] / static_cast<float>(pos);
          ASSERT_NEAR(o[static_cast<size_t>(i)], want, 0.02f) << "hd " << hd << " page " << pos / kPageTokens;
        }
      }
      for (int64_t i = 0; i < hd; ++i) mean[static_cast<size_t>(i)] += back[static_cast<size_t>(i)];
    }
    // 4 bits on the key's own part: ~0.1 relative error (0.25 bounds every q4 row).
    // Without the offset the error would scale with the common part (8× larger here).
    EXPECT_LT(std::sqrt(err / own), 0.25) << "hd " << hd;
  }
}

TEST(Kernels, HadamardIsOrthogonalAndItsOwnInverse) {
  auto x = test::gaussian(64, 3);
  const auto orig = x;
  cpu::hadamard(x.data(), 64);
  double a = 0, b = 0;
  for (size_t i = 0; i < 64; ++i) {
    a += orig[i] * orig[i];
    b += x[i] * x[i];
  }
  EXPECT_NEAR(a, b, 1e-4 * a);
  cpu::hadamard(x.data(), 64);
  for (size_t i = 0; i < 64; ++i) EXPECT_NEAR(x[i], orig[i], 1e-5);
}

// Attention over pages, every level against the reference; lengths cross pages and
// start mid-page (sliding windows); GQA groups of 1, 3 and 4.
TEST(Kernels, AttentionMatchesReferenceOnEveryLevel) {
  struct Case {
    int64_t heads, kv_heads, hd, begin, end;
  };
  const Case cases[] = {{4, 4, 16, 0, 1}, {9, 3, 64, 0, 70}, {8, 2, 64, 5, 33}, {32, 8, 64, 40, 200}, {4, 1, 128, 0, 65}};
  for (KvType type : {KvType::f32, KvType::f16, KvType::q8, KvType::q4}) {
    for (const Case c : cases) {
      const KvLayout layout{type, 1, static_cast<uint32_t>(c.kv_heads), static_cast<uint32_t>(c.hd), kPageTokens};
      const int64_t n_pages = (c.end + kPageTokens - 1) / kPageTokens;
      std::vector<uint8_t> memory(static_cast<size_t>(n_pages * layout.page_bytes()));
      std::vector<uint8_t*> pages;
      for (int64_t p = 0; p < n_pages; ++p) pages.push_back(memory.data() + p * layout.page_bytes());
      const auto shared = test::gaussian(static_cast<size_t>(c.hd), 5, 3.0f);  // keys' common part
      for (int64_t pos = 0; pos < c.end; ++pos)
        for (int64_t g = 0; g < c.kv_heads; ++g)
          for (uint32_t kind = 0; kind < 2; ++kind) {
            auto v = test::gaussian(static_cast<size_t>(c.hd), static_cast<uint64_t>(pos * 97 + g * 7 + kind));
            if (kind == 0)
              for (size_t i = 0; i < v.size(); ++i) v[i] += shared[i];
            cpu::store_kv(layout, pages.data(), 0, kind, static_cast<uint32_t>(g), pos, v.data());
          }
      const auto q = test::gaussian(static_cast<size_t>(c.heads * c.hd), 42);
      cpu::AttentionArgs a{&layout, 0, pages.data(), c.heads, c.kv_heads, c.hd, 1.0f / std::sqrt(static_cast<float>(c.hd))};
      std::vector<float> scratch(static_cast<size_t>(cpu::attention_scratch_floats(a)));
      std::vector<float> ref(static_cast<size_t>(c.heads * c.hd));
      for (int64_t g = 0; g < c.kv_heads; ++g)
        cpu::attend_group(a, g, q.data(), c.begin, c.end, ref.data(), scratch.data(), SimdLevel::scalar);
      for (SimdLevel level : cpu::supported_simd_levels()) {
        std::vector<float> got(ref.size());
        for (int64_t g = 0; g < c.kv_heads; ++g)
          cpu::attend_group(a, g, q.data(), c.begin, c.end, got.data(), scratch.data(), level);
        for (size_t i = 0; i < got.size(); ++i)
          ASSERT_NEAR(got[i], ref[i], 1e-5) << kv_type_name(type) << " heads " << c.heads << "/" << c.kv_heads
                                            << " [" << c.begin << ", " << c.end << ") " << cpu::simd_level_name(level);
      }
    }
  }
}

TEST(Kernels, RmsNormMatchesReferenceOnEveryLevel) {
  for (int64_t n : {1, 17, 64, 576, 2049}) {
    const auto x = test::gaussian(static_cast<size_t>(n), static_cast<uint64_t>(n));
    const auto w = test::gaussian(static_cast<size_t>(n), 99);
    std::vector<float> ref(static_cast<size_t>(n)), got(static_cast<size_t>(n));
    cpu::rms_norm(x.data(), w.data(), n, 1e-5f, ref.data(), SimdLevel::scalar);
    for (SimdLevel level : cpu::supported_simd_levels()) {
      cpu::rms_norm(x.data(), w.data(), n, 1e-5f, got.data(), level);
      for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(got[i], ref[i], 1e-5 * std::fabs(ref[i]) + 1e-6) << n;
    }
  }
}

// silu(gate) · up against the scalar formula on every level: odd lengths, values from
// -100 to 100 (e^-g overflowing float for the scalar form), ±Inf, NaN and zero.
TEST(Kernels, SiluMulMatchesReferenceOnEveryLevel) {
  for (int64_t n : {1, 15, 16, 33, 1000}) {
    auto gate = test::gaussian(static_cast<size_t>(n), static_cast<uint64_t>(n), 4.0f);
    const auto up = test::gaussian(static_cast<size_t>(n), 7);
    const float specials[] = {-100.0f, 100.0f, -30.0f, 0.0f, INFINITY, -INFINITY, NAN, 1e-30f};
    for (size_t i = 0; i < std::size(specials) && i < gate.size(); ++i) gate[i * 3 % gate.size()] = specials[i];
    std::vector<float> ref(static_cast<size_t>(n)), got(static_cast<size_t>(n), -1.0f);
    cpu::silu_mul(gate.data(), up.data(), n, ref.data(), SimdLevel::scalar);
    for (SimdLevel level : cpu::supported_simd_levels()) {
      cpu::silu_mul(gate.data(), up.data(), n, got.data(), level);
      for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(ref[i])) {
          if (std::isnan(ref[i])) EXPECT_TRUE(std::isnan(got[i])) << "gate " << gate[i] << " " << cpu::simd_level_name(level);
          else EXPECT_EQ(got[i], ref[i]) << "gate " << gate[i] << " " << cpu::simd_level_name(level);
          continue;
        }
        ASSERT_NEAR(got[i], ref[i], 1e-6 * std::fabs(ref[i]) + 1e-30)
            << "gate " << gate[i] << " up " << up[i] << " n " << n << " " << cpu::simd_level_name(level);
      }
    }
  }
}

}  // namespace
}  // namespace kvant
