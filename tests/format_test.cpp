// format/: half conversions, dtype sizes, reference quantizers, writer/reader round trip.
#include <gtest/gtest.h>
#include <cpuid.h>
#include <immintrin.h>

#include <bit>
#include <cmath>
#include <cstring>

#include "format/dtype.h"
#include "format/half.h"
#include "format/quant.h"
#include "format/reader.h"
#include "format/utf8.h"
#include "format/writer.h"
#include "tests/test_util.h"

namespace kvant {
namespace {

// ---- half precision -------------------------------------------------------------

TEST(Half, EveryF16RoundTripsThroughF32) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f)))) << h;
      continue;
    }
    EXPECT_EQ(f32_to_f16(f), h) << "f16 bits " << h;
  }
}

// The hardware conversion (F16C, IEEE round-to-nearest-even) is an independent reference.
__attribute__((target("f16c"))) uint16_t hardware_f16(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}

TEST(Half, F32ToF16MatchesHardwareRounding) {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;  // CPUID: clang's __builtin_cpu_supports lacks "f16c"
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_F16C)) GTEST_SKIP() << "no F16C on this CPU";
  // Every f32 whose low 13 bits are one of the interesting rounding cases, over all
  // exponents and a sweep of mantissas: ties, just above/below ties, subnormal range,
  // overflow boundary.
  const uint32_t lows[] = {0, 1, 0xfff, 0x1000, 0x1001, 0x1fff, 0x0800, 0x17ff};
  for (uint32_t sign = 0; sign < 2; ++sign)
    for (uint32_t exp = 0; exp < 255; ++exp)
      for (uint32_t mant_hi = 0; mant_hi < 1024; mant_hi += 7)
        for (uint32_t low : lows) {
          const uint32_t bits = (sign << 31) | (exp << 23) | (mant_hi << 13) | low;
          const float f = std::bit_cast<float>(bits);
          ASSERT_EQ(f32_to_f16(f), hardware_f16(f)) << std::hex << "f32 bits 0x" << bits;
        }
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.99f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // tie rounds to even: infinity
  EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);  // tie to even: zero
  EXPECT_EQ(f32_to_f16(0x1.8p-25f), 0x0001);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::nanf("")))));
}

TEST(Half, BF16IsCorrectlyRoundedAndF16OfBF16IsExactInRange) {
  // Round to nearest even: compare against the two neighbours computed exactly in double.
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(rng()) & 0xbfffffffu);  // finite, |f| < 2
    const uint16_t b = f32_to_bf16(f);
    const double err = std::fabs(static_cast<double>(bf16_to_f32(b)) - f);
    for (int d : {-1, 1}) {  // the neighbours of the same sign
      const float n = bf16_to_f32(static_cast<uint16_t>(b + d));
      if (std::isnan(n) || std::signbit(n) != std::signbit(bf16_to_f32(b))) continue;
      EXPECT_LE(err, std::fabs(static_cast<double>(n) - f)) << f;
    }
  }
  // BF16 -> F16 (via exact f32) is correctly rounded: equals rounding the exact value.
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_f32(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    const uint16_t h = f32_to_f16(f);
    const float back = f16_to_f32(h);
    if (std::isinf(back) || std::isinf(f)) continue;
    const double err = std::fabs(static_cast<double>(back) - f);
    for (int d : {-1, 1}) {
      const uint16_t n = static_cast<uint16_t>(h + d);
      const float nf = f16_to_f32(n);
      if (std::isnan(nf) || std::signbit(nf) != std::signbit(back) || std::isinf(nf)) continue;
      EXPECT_LE(err, std::fabs(static_cast<double>(nf) - f)) << "bf16 bits " << b;
    }
  }
}

// ---- dtypes ------------------------------------------------------------------------

TEST(DType, SizesAndBitsPerWeight) {
  EXPECT_EQ(*tensor_bytes(DType::f32, 3, 5), 60u);
  EXPECT_EQ(*tensor_bytes(DType::f16, 3, 5), 30u);
  EXPECT_EQ(*tensor_bytes(DType::q8, 2, 64), 2u * 64 + 2u * 2 * 2);
  EXPECT_EQ(*tensor_bytes(DType::q4, 2, 64), 2u * 32 + 2u * 2 * 2);
  EXPECT_FALSE(tensor_bytes(DType::q4, 2, 65));              // not a multiple of 64
  EXPECT_FALSE(tensor_bytes(DType::f32, 1ull << 40, 1ull << 30));  // overflows
  EXPECT_DOUBLE_EQ(dtype_bits_per_weight(DType::q8), 8.5);
  EXPECT_DOUBLE_EQ(dtype_bits_per_weight(DType::q4), 4.5);
  EXPECT_EQ(dtype_from_name("q4"), DType::q4);
  EXPECT_FALSE(dtype_from_name("q5"));
  EXPECT_FALSE(dtype_from_u32(99));
}

TEST(Utf8, AcceptsValidRejectsInvalid) {
  EXPECT_TRUE(is_valid_utf8("héllo 世界 🙂"));
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(is_valid_utf8("abc\xe4\xb8"));       // truncated
  EXPECT_FALSE(is_valid_utf8("\x80"));
}

// ---- reference quantizers --------------------------------------------------------

double rms_error_q8(const std::vector<float>& x, QuantMethod m) {
  std::vector<int8_t> q(x.size());
  std::vector<uint16_t> s(x.size() / 32);
  std::vector<float> back(x.size());
  const double sse = quantize_row_q8(x.data(), static_cast<int64_t>(x.size()), q.data(), s.data(), m);
  dequantize_row_q8(q.data(), s.data(), static_cast<int64_t>(x.size()), back.data());
  double check = 0;
  for (size_t i = 0; i < x.size(); ++i) check += (x[i] - back[i]) * static_cast<double>(x[i] - back[i]);
  EXPECT_NEAR(sse, check, 1e-6 * (check + 1e-12));  // the returned error is the real one
  return std::sqrt(check / static_cast<double>(x.size()));
}

double rms_error_q4(const std::vector<float>& x, QuantMethod m) {
  std::vector<uint8_t> q(x.size() / 2);
  std::vector<uint16_t> s(x.size() / 32);
  std::vector<float> back(x.size());
  const double sse = quantize_row_q4(x.data(), static_cast<int64_t>(x.size()), q.data(), s.data(), m);
  dequantize_row_q4(q.data(), s.data(), static_cast<int64_t>(x.size()), back.data());
  double check = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    check += (x[i] - back[i]) * static_cast<double>(x[i] - back[i]);
    EXPECT_FLOAT_EQ(back[i], f16_to_f32(s[i / 32]) * static_cast<float>(q4_element(q.data(), static_cast<int64_t>(i))));
  }
  EXPECT_NEAR(sse, check, 1e-6 * (check + 1e-12));
  return std::sqrt(check / static_cast<double>(x.size()));
}

TEST(Quant, ErrorIsSmallAndSearchBeatsAbsmax) {
  const auto x = test::gaussian(64 * 257, 11, 0.02f);
  const double q8_search = rms_error_q8(x, QuantMethod::search), q8_absmax = rms_error_q8(x, QuantMethod::absmax);
  const double q4_search = rms_error_q4(x, QuantMethod::search), q4_absmax = rms_error_q4(x, QuantMethod::absmax);
  // Relative to the weights' RMS (0.02): q8 ~0.5%, q4 ~10%.
  EXPECT_LT(q8_search / 0.02, 0.006);
  EXPECT_LT(q4_search / 0.02, 0.11);
  EXPECT_LT(q8_search, 0.9 * q8_absmax);
  EXPECT_LT(q4_search, 0.9 * q4_absmax);
}

TEST(Quant, EdgeBlocks) {
  std::vector<float> x(128, 0.0f);  // an all-zero block, then odd blocks
  for (int i = 32; i < 64; ++i) x[i] = 1e-9f;                // underflows the f16 scale
  for (int i = 64; i < 96; ++i) x[i] = (i % 2 ? 1.0f : -1.0f) * 60000.0f;  // near the f16 limit
  x[100] = -3.0f;                                             // a lone value
  std::vector<int8_t> q(128);
  std::vector<uint16_t> s(4);
  quantize_row_q8(x.data(), 128, q.data(), s.data());
  std::vector<float> back(128);
  dequantize_row_q8(q.data(), s.data(), 128, back.data());
  for (int i = 0; i < 32; ++i) EXPECT_EQ(back[i], 0.0f);
  for (int i = 64; i < 96; ++i) EXPECT_NEAR(back[i], x[i], 60000.0f * 0.01f);
  EXPECT_NEAR(back[100], -3.0f, 0.03f);
  for (int i = 0; i < 128; ++i) EXPECT_TRUE(std::isfinite(back[i]));
}

// ---- writer and reader ---------------------------------------------------------------

TEST(ReaderWriter, RoundTripsMetadataAndTensors) {
  const std::string path = test::temp_dir() + "/roundtrip.kvant";
  {
    KvantWriter w(path);
    w.set("general.name", std::string("round trip"));
    w.set("test.flag", true);
    w.set("test.u32", uint32_t{7});
    w.set("test.i32", int32_t{-7});
    w.set("test.u64", uint64_t{1} << 40);
    w.set("test.i64", int64_t{-1} << 40);
    w.set("test.f32", 1.5f);
    w.set("test.f64", 2.25);
    w.set("test.u32s", std::vector<uint32_t>{1, 2, 3});
    w.set("test.strings", std::vector<std::string>{"a", "", "héllo"});
    w.set("test.f32s", std::vector<float>{});
    ASSERT_TRUE(w.add_tensor("a", DType::f32, {3}));
    ASSERT_TRUE(w.add_tensor("b.matrix", DType::q4, {2, 64}));
    ASSERT_TRUE(w.add_tensor("c", DType::f16, {1, 1, 5}));
    EXPECT_FALSE(w.add_tensor("a", DType::f32, {1}));       // duplicate
    EXPECT_FALSE(w.add_tensor("bad", DType::q8, {2, 63}));  // row length
    ASSERT_TRUE(w.begin());
    EXPECT_TRUE(test::file_exists(w.temp_path()));
    EXPECT_FALSE(test::file_exists(path));  // nothing under the final name until commit
    const float a[3] = {1, 2, 3};
    ASSERT_TRUE(w.write({reinterpret_cast<const uint8_t*>(a), 12}));
    std::vector<uint8_t> b(*tensor_bytes(DType::q4, 2, 64), 0x5a);
    ASSERT_TRUE(w.write({b.data(), 10}));  // in pieces
    ASSERT_TRUE(w.write({b.data() + 10, b.size() - 10}));
    std::vector<uint8_t> c(10, 0x11);
    EXPECT_FALSE(w.write({c.data(), 11}));  // overrun
    ASSERT_TRUE(w.write({c.data(), 10}));
    ASSERT_TRUE(w.commit());
  }
  auto opened = KvantFile::open(path, /*verify_tensors=*/true);
  ASSERT_TRUE(opened) << opened.status().message();
  const KvantFile& f = **opened;
  const Metadata& m = f.metadata();
  EXPECT_EQ(*m.get_string("general.name"), "round trip");
  EXPECT_TRUE(*m.get_bool("test.flag"));
  EXPECT_EQ(*m.get_u32("test.u32"), 7u);
  EXPECT_EQ(*m.get_i64("test.i32"), -7);
  EXPECT_EQ(*m.get_u64("test.u64"), uint64_t{1} << 40);
  EXPECT_EQ(*m.get_i64("test.i64"), int64_t{-1} << 40);
  EXPECT_EQ(*m.get_f32("test.f32"), 1.5f);
  EXPECT_EQ(*m.get_u32_array("test.u32s"), (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(*m.get_string_array("test.strings"), (std::vector<std::string_view>{"a", "", "héllo"}));
  EXPECT_TRUE(m.get_f32_array("test.f32s")->empty());
  EXPECT_FALSE(m.get_u32("general.name"));  // wrong type, with a message naming the key
  EXPECT_NE(m.get_u32("general.name").status().message().find("general.name"), std::string::npos);
  EXPECT_FALSE(m.get_u32("missing.key"));
  EXPECT_EQ(*m.get_u32_or("missing.key", 3), 3u);

  ASSERT_EQ(f.tensors().size(), 3u);
  const TensorInfo* b = f.find_tensor("b.matrix");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::q4);
  EXPECT_EQ(b->rows(), 2u);
  EXPECT_EQ(b->cols(), 64u);
  const auto bytes = f.data(*b);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(bytes.data()) % 64, 0u);  // zero-copy and aligned
  EXPECT_EQ(bytes[0], 0x5a);
  const TensorInfo* c = f.find_tensor("c");
  EXPECT_EQ(c->shape_string(), "[1, 1, 5]");
  float a[3];
  std::memcpy(a, f.data(f.tensors()[0]).data(), 12);
  EXPECT_EQ(a[2], 3.0f);
  EXPECT_TRUE(f.verify_all().empty());
}

TEST(ReaderWriter, UncommittedWriterLeavesNothingAndKeepsThePreviousFile) {
  const std::string path = test::temp_dir() + "/keep.kvant";
  test::write_file(path, {'o', 'l', 'd'});
  std::string temp;
  {
    KvantWriter w(path);
    ASSERT_TRUE(w.add_tensor("a", DType::f32, {4}));
    ASSERT_TRUE(w.begin());
    temp = w.temp_path();
    EXPECT_TRUE(test::file_exists(temp));
  }  // destroyed without commit
  EXPECT_FALSE(test::file_exists(temp));
  EXPECT_EQ(test::read_file(path), (std::vector<uint8_t>{'o', 'l', 'd'}));
}

TEST(Reader, PathErrorsAreNamed) {
  auto missing = KvantFile::open(test::temp_dir() + "/does-not-exist.kvant");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.status().message().find("does-not-exist.kvant"), std::string::npos);
  auto dir = KvantFile::open(test::temp_dir());
  ASSERT_FALSE(dir);
  EXPECT_NE(dir.status().message().find("directory"), std::string::npos);
  const std::string empty = test::temp_dir() + "/empty.kvant";
  test::write_file(empty, {});
  auto e = KvantFile::open(empty);
  ASSERT_FALSE(e);
  EXPECT_NE(e.status().message().find("empty"), std::string::npos);
}

}  // namespace
}  // namespace kvant
