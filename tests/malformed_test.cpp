// The reader against a catalogue of malformed files, each built byte by byte
// (tests/raw_kvant.h) with the checksums made right so that the check under test is the
// one that fires.
#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstring>
#include <set>

#include "format/reader.h"
#include "tests/raw_kvant.h"
#include "tests/test_util.h"

namespace kvant {
namespace {

using test::RawFile;
using test::put;

std::string open_error(const std::vector<uint8_t>& bytes) {
  auto r = KvantFile::from_memory(bytes);
  return r ? std::string() : r.status().message();
}

std::vector<uint8_t> value(uint32_t type, std::initializer_list<uint8_t> bytes) {
  std::vector<uint8_t> v;
  put<uint32_t>(v, type);
  v.insert(v.end(), bytes);
  return v;
}

TEST(Malformed, TheBaseFileIsValid) {
  const std::vector<uint8_t> bytes = RawFile().build();  // from_memory borrows them
  auto r = KvantFile::from_memory(bytes);
  ASSERT_TRUE(r) << r.status().message();
  EXPECT_EQ(r.value()->tensors().size(), 2u);
  EXPECT_EQ(*r.value()->metadata().get_u32("test.answer"), 42u);
  EXPECT_TRUE(r.value()->verify_all().empty());
}

struct Case {
  const char* name;
  std::function<std::vector<uint8_t>()> make;
  const char* expected;  // a phrase of the error message
};

TEST(Malformed, EachIsRejectedWithItsOwnMessage) {
  const std::vector<Case> cases = {
      {"bad magic", [] { auto f = RawFile().build(); f[0] = 'X'; return f; }, "bad magic"},
      {"newer version", [] { RawFile r; r.major = 2; return r.build(); }, "newer than this reader"},
      {"short file", [] { return std::vector<uint8_t>(10, 0); }, "shorter than the 64-byte preamble"},
      {"preamble checksum", [] { RawFile r; r.fix_preamble_checksum = false; return r.build(); },
       "preamble checksum"},
      {"header checksum", [] { RawFile r; r.fix_header_checksum = false; return r.build(); }, "header checksum"},
      {"header past end", [] { RawFile r; r.header_size = 1u << 20; return r.build(); },
       "header extends past the end"},
      {"truncated", [] { auto f = RawFile().build(); f.resize(f.size() - 10); return f; }, "truncated"},
      {"trailing bytes", [] { auto f = RawFile().build(); f.push_back(0); return f; }, "after the data region"},
      {"tensor past end", [] { RawFile r; r.tensors[1].offset = 128; return r.build(); }, "extends past its end"},
      {"overlapping", [] { RawFile r; r.tensors[0].offset = 64; return r.build(); }, "overlap"},
      {"misaligned", [] { RawFile r; r.tensors[1].offset = 32; return r.build(); }, "not aligned"},
      {"size mismatch", [] { RawFile r; r.tensors[1].size = 60; return r.build(); }, "stores 60 bytes but shape"},
      {"dimension overflow", [] { RawFile r; r.tensors[0].dims = {1ull << 40, 1ull << 40}; return r.build(); },
       "overflows"},
      {"10^12 elements", [] { RawFile r; r.tensors[0].dims = {1000000, 1000000}; r.tensors[0].size = 4000000000000ull;
                              return r.build(); }, "extends past its end"},
      {"dimension too large", [] { RawFile r; r.tensors[0].dims = {(1ull << 40) + 1}; return r.build(); },
       "above the limit"},
      {"zero dimension", [] { RawFile r; r.tensors[0].dims = {0}; return r.build(); }, "zero dimension"},
      {"too many dimensions", [] { RawFile r; r.tensors[0].dims = {1, 1, 1, 1, 4}; return r.build(); },
       "dimensions (1 to 4 allowed)"},
      {"unknown dtype", [] { RawFile r; r.tensors[0].dtype = 17; return r.build(); }, "unknown dtype 17"},
      {"quantized row length", [] { RawFile r; r.tensors[1].dims = {2, 32}; return r.build(); },
       "not a multiple of 64"},
      {"duplicate names", [] { RawFile r; r.tensors[1].name = "x"; return r.build(); }, "duplicate tensor name"},
      {"non-UTF-8 name", [] { RawFile r; r.tensors[1].name = "bad\xff"; return r.build(); }, "not valid UTF-8"},
      {"empty name", [] { RawFile r; r.tensors[1].name = ""; return r.build(); }, "empty name"},
      {"bad alignment", [] { RawFile r; r.alignment = 48; return r.build(); }, "not a power of two"},
      {"unknown flags", [] { RawFile r; r.flags = 1; return r.build(); }, "unknown preamble flags"},
      {"metadata count", [] { RawFile r; r.meta_count = 1ull << 50; return r.build(); },
       "metadata count"},
      {"tensor count", [] { RawFile r; r.tensor_count = 1000000000000ull; return r.build(); }, "tensor count"},
      {"unknown value type", [] { RawFile r; r.meta[0].second = value(77, {0, 0, 0, 0}); return r.build(); },
       "unknown value type 77"},
      {"bad bool", [] { RawFile r; r.meta[0].second = value(1, {2}); return r.build(); }, "not 0 or 1"},
      {"non-UTF-8 string", [] { RawFile r; r.meta[0].second = value(8, {2, 0, 0, 0, 0xc0, 0xaf}); return r.build(); },
       "string value is not valid UTF-8"},
      {"string past header", [] { RawFile r; r.meta[0].second = value(8, {0xff, 0xff, 0xff, 0x00}); return r.build(); },
       "header ends inside"},
      {"huge array", [] { RawFile r;
                          r.meta[0].second = value(9, {2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0});
                          return r.build(); }, "more than the header can hold"},
      {"bad key", [] { RawFile r; r.meta[0].first = "Bad Key"; return r.build(); }, "not made of [a-z0-9_.]"},
      {"duplicate key", [] { RawFile r; r.meta.push_back(r.meta[0]); return r.build(); }, "duplicate metadata key"},
      {"trailing header bytes", [] { RawFile r; r.header_suffix = {1, 2, 3}; return r.build(); },
       "unexpected bytes at the end of the header"},
  };
  std::set<std::string> messages;
  for (const auto& c : cases) {
    const std::string msg = open_error(c.make());
    EXPECT_NE(msg, "") << c.name << ": accepted";
    EXPECT_NE(msg.find(c.expected), std::string::npos) << c.name << ": got '" << msg << "'";
    messages.insert(msg);
  }
  EXPECT_EQ(messages.size(), cases.size()) << "every malformation has its own message";
}

// Every single-byte corruption of the preamble and header, with checksums repaired so
// the parser sees it, and every truncation: an error or a valid file, never a crash
// (this suite also runs under ASan/UBSan).
TEST(Malformed, NoCorruptionCrashes) {
  const RawFile base;
  const std::vector<uint8_t> good = base.build();
  uint64_t header_size;
  std::memcpy(&header_size, good.data() + 16, 8);
  for (size_t pos = 0; pos < 64 + header_size; ++pos) {
    for (uint8_t flip : {0x01, 0x80, 0xff}) {
      std::vector<uint8_t> f = good;
      f[pos] ^= flip;
      const uint64_t h = XXH3_64bits(f.data() + 64, std::min<uint64_t>(header_size, f.size() - 64));
      if (pos < 24 || pos >= 32) std::memcpy(f.data() + 24, &h, 8);
      const uint64_t p = XXH3_64bits(f.data(), 56);
      if (pos < 56) std::memcpy(f.data() + 56, &p, 8);
      auto r = KvantFile::from_memory(f);
      if (r) {
        for (const auto& t : r.value()->tensors()) (void)r.value()->verify_tensor(t);
      }
    }
  }
  for (size_t len = 0; len < good.size(); ++len) {
    std::vector<uint8_t> f(good.begin(), good.begin() + static_cast<long>(len));
    EXPECT_FALSE(KvantFile::from_memory(f)) << "truncated to " << len;
  }
}

TEST(Malformed, FlippedTensorByteIsNamedByVerify) {
  const std::vector<uint8_t> good = RawFile().build();
  auto r = KvantFile::from_memory(good);
  ASSERT_TRUE(r);
  for (const auto& t : r.value()->tensors()) {
    for (uint64_t i = 0; i < t.size; i += 7) {
      std::vector<uint8_t> f = good;
      f[r.value()->data_offset() + t.offset + i] ^= 0x10;
      auto bad = KvantFile::from_memory(f);
      ASSERT_TRUE(bad);  // the header is intact
      const auto failed = bad.value()->verify_all();
      ASSERT_EQ(failed.size(), 1u);
      EXPECT_EQ(failed[0], t.name);
    }
  }
}

}  // namespace
}  // namespace kvant
