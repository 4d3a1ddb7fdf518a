// Typed key/value metadata of a .kvant header (FORMAT.md, "Metadata").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "format/status.h"

namespace kvant {

enum class ValueType : uint32_t {
  boolean = 1,
  u32 = 2,
  i32 = 3,
  u64 = 4,
  i64 = 5,
  f32 = 6,
  f64 = 7,
  string = 8,
  array = 9,
};

std::string_view value_type_name(ValueType t);

// An owned value, as the writer takes it. Arrays hold one element type.
using Value = std::variant<bool, uint32_t, int32_t, uint64_t, int64_t, float, double, std::string,
                           std::vector<uint32_t>, std::vector<int32_t>, std::vector<uint64_t>, std::vector<int64_t>,
                           std::vector<float>, std::vector<double>, std::vector<std::string>>;

// One validated entry of a file's metadata, pointing into the mapped header.
struct MetaEntry {
  std::string_view key;
  ValueType type = ValueType::boolean;
  ValueType element_type = ValueType::boolean;  // arrays only
  uint64_t count = 1;                           // arrays: number of elements
  const uint8_t* data = nullptr;                // encoded value (for arrays: the elements)
  uint64_t size = 0;                            // bytes at data
};

// Read-only view of a file's metadata. Accessors fail with a message that names the
// key when it is missing or has another type; the *_or forms return the default
// when the key is missing (and still fail on a type mismatch).
class Metadata {
 public:
  void add(const MetaEntry& entry);  // caller guarantees unique, validated entries
  const std::vector<MetaEntry>& entries() const { return entries_; }
  const MetaEntry* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }

  Result<bool> get_bool(std::string_view key) const;
  Result<uint32_t> get_u32(std::string_view key) const;
  Result<uint64_t> get_u64(std::string_view key) const;  // accepts u32 too
  Result<int64_t> get_i64(std::string_view key) const;   // accepts i32 too
  Result<float> get_f32(std::string_view key) const;
  Result<std::string_view> get_string(std::string_view key) const;
  Result<std::vector<uint32_t>> get_u32_array(std::string_view key) const;
  Result<std::vector<int32_t>> get_i32_array(std::string_view key) const;
  Result<std::vector<float>> get_f32_array(std::string_view key) const;
  Result<std::vector<std::string_view>> get_string_array(std::string_view key) const;

  Result<bool> get_bool_or(std::string_view key, bool fallback) const;
  Result<uint32_t> get_u32_or(std::string_view key, uint32_t fallback) const;
  Result<float> get_f32_or(std::string_view key, float fallback) const;
  Result<std::string_view> get_string_or(std::string_view key, std::string_view fallback) const;

  // Short human-readable rendering of a value (arrays abbreviated), for kvant-inspect.
  static std::string describe(const MetaEntry& entry, size_t max_chars = 80);

 private:
  Result<const MetaEntry*> typed(std::string_view key, ValueType type) const;
  Result<const MetaEntry*> typed_array(std::string_view key, ValueType element_type) const;
  std::vector<MetaEntry> entries_;
  std::unordered_map<std::string_view, size_t> index_;
};

}  // namespace kvant
