// A .kvant file image built byte by byte, independently of KvantWriter (which refuses
// to write most malformed files), with the checksums made right unless told otherwise,
// so that the check under test is the one that fires. Used by the malformed-file and
// hostile-input suites.
#pragma once

#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvant::test {

template <class T>
void put(std::vector<uint8_t>& out, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}
inline void put_str(std::vector<uint8_t>& out, std::string_view s) {
  put<uint32_t>(out, static_cast<uint32_t>(s.size()));
  out.insert(out.end(), s.begin(), s.end());
}

struct RawTensor {
  std::string name;
  uint32_t dtype;
  std::vector<uint64_t> dims;
  uint64_t offset, size;
};

// By default: metadata test.answer = 42 (u32); tensors x (f32 [4]) and y (q8 [1, 64]).
struct RawFile {
  uint32_t major = 1, minor = 0, alignment = 64, flags = 0;
  std::vector<std::pair<std::string, std::vector<uint8_t>>> meta;  // key, then type + value bytes
  std::vector<RawTensor> tensors;
  std::vector<uint8_t> data = std::vector<uint8_t>(64 + 68, 0x33);
  std::optional<uint64_t> header_size, data_size, meta_count, tensor_count;
  std::vector<uint8_t> header_suffix;  // extra bytes at the end of the header
  bool fix_header_checksum = true, fix_preamble_checksum = true;

  RawFile() {
    std::vector<uint8_t> v;
    put<uint32_t>(v, 2);  // u32
    put<uint32_t>(v, 42);
    meta.emplace_back("test.answer", v);
    tensors.push_back({"x", 0, {4}, 0, 16});      // f32 [4]
    tensors.push_back({"y", 3, {1, 64}, 64, 68});  // q8 [1, 64]
  }

  std::vector<uint8_t> build() const {
    std::vector<uint8_t> h;
    put<uint64_t>(h, meta_count.value_or(meta.size()));
    for (const auto& [k, v] : meta) {
      put_str(h, k);
      h.insert(h.end(), v.begin(), v.end());
    }
    put<uint64_t>(h, tensor_count.value_or(tensors.size()));
    for (const auto& t : tensors) {
      put_str(h, t.name);
      put<uint32_t>(h, t.dtype);
      put<uint32_t>(h, static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) put<uint64_t>(h, d);
      put<uint64_t>(h, t.offset);
      put<uint64_t>(h, t.size);
      const bool in_range = t.offset <= data.size() && t.size <= data.size() - t.offset;
      put<uint64_t>(h, in_range ? XXH3_64bits(data.data() + t.offset, t.size) : 0);
    }
    h.insert(h.end(), header_suffix.begin(), header_suffix.end());
    const uint64_t data_offset = (64 + h.size() + alignment - 1) / alignment * alignment;
    std::vector<uint8_t> f(data_offset + data.size(), 0);
    const uint8_t magic[8] = {'K', 'V', 'A', 'N', 'T', 0, '\r', '\n'};
    std::memcpy(f.data(), magic, 8);
    auto at = [&](size_t off, auto v) { std::memcpy(f.data() + off, &v, sizeof(v)); };
    at(8, major);
    at(12, minor);
    at(16, header_size.value_or(h.size()));
    at(24, fix_header_checksum ? static_cast<uint64_t>(XXH3_64bits(h.data(), h.size())) : uint64_t{12345});
    at(32, data_offset);
    at(40, data_size.value_or(data.size()));
    at(48, alignment);
    at(52, flags);
    at(56, fix_preamble_checksum ? static_cast<uint64_t>(XXH3_64bits(f.data(), 56)) : uint64_t{999});
    std::memcpy(f.data() + 64, h.data(), h.size());
    std::memcpy(f.data() + data_offset, data.data(), data.size());
    return f;
  }
};

// Rewrites the preamble and header checksums of a .kvant image (where the header size
// lets them be computed): a patched or mutated image then reaches the checks behind them.
inline void repair_checksums(std::vector<uint8_t>& bytes) {
  if (bytes.size() < 64) return;
  uint64_t header_size;
  std::memcpy(&header_size, bytes.data() + 16, 8);
  if (header_size <= bytes.size() - 64) {
    const uint64_t h = XXH3_64bits(bytes.data() + 64, header_size);
    std::memcpy(bytes.data() + 24, &h, 8);
  }
  const uint64_t p = XXH3_64bits(bytes.data(), 56);
  std::memcpy(bytes.data() + 56, &p, 8);
}

}  // namespace kvant::test
