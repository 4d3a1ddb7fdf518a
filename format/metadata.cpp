#include "format/metadata.h"

#include <bit>
#include <cstring>

namespace kvant {

static_assert(std::endian::native == std::endian::little, "kvant assumes a little-endian host");

namespace {

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <class T>
std::vector<T> load_array(const MetaEntry& e) {
  std::vector<T> out(e.count);
  if (e.count) std::memcpy(out.data(), e.data, e.count * sizeof(T));
  return out;
}

Status type_error(std::string_view key, const MetaEntry& e, std::string_view wanted) {
  std::string have(value_type_name(e.type));
  if (e.type == ValueType::array) have = fmt::format("array of {}", value_type_name(e.element_type));
  return Status::error(ErrorCode::format, "metadata key '{}' has type {}, expected {}", key, have, wanted);
}

}  // namespace

std::string_view value_type_name(ValueType t) {
  switch (t) {
    case ValueType::boolean: return "bool";
    case ValueType::u32: return "u32";
    case ValueType::i32: return "i32";
    case ValueType::u64: return "u64";
    case ValueType::i64: return "i64";
    case ValueType::f32: return "f32";
    case ValueType::f64: return "f64";
    case ValueType::string: return "string";
    case ValueType::array: return "array";
  }
  return "unknown";
}

void Metadata::add(const MetaEntry& entry) {
  index_.emplace(entry.key, entries_.size());
  entries_.push_back(entry);
}

const MetaEntry* Metadata::find(std::string_view key) const {
  const auto it = index_.find(key);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

Result<const MetaEntry*> Metadata::typed(std::string_view key, ValueType type) const {
  const MetaEntry* e = find(key);
  if (!e) return Status::error(ErrorCode::format, "metadata key '{}' is missing", key);
  if (e->type != type) return type_error(key, *e, value_type_name(type));
  return e;
}

Result<const MetaEntry*> Metadata::typed_array(std::string_view key, ValueType element_type) const {
  const MetaEntry* e = find(key);
  if (!e) return Status::error(ErrorCode::format, "metadata key '{}' is missing", key);
  if (e->type != ValueType::array || e->element_type != element_type)
    return type_error(key, *e, fmt::format("array of {}", value_type_name(element_type)));
  return e;
}

Result<bool> Metadata::get_bool(std::string_view key) const {
  KVANT_ASSIGN_OR_RETURN(const MetaEntry* e, typed(key, ValueType::boolean));
  return e->data[0] != 0;
}

Result<uint32_t> Metadata::get_u32(std::string_view key) const {
  KVANT_ASSIGN_OR_RETURN(const MetaEntry* e, typed(key, ValueType::u32));
  return load<uint32_t>(e->data);
}

Result<uint64_t> Metadata::get_u64(std::string_view key) const {
  const MetaEntry* e = find(key);
  if (e && e->type == ValueType::u32) return static_cast<uint64_t>(load<uint32_t>(e->data));
  KVANT_ASSIGN_OR_RETURN(e, typed(key, ValueType::u64));
  return load<uint64_t>(e->data);
}

Result<int64_t> Metadata::get_i64(std::string_view key) const {
  const MetaEntry* e = find(key);
  if (e && e->type == ValueType::i32) return static_cast<int64_t>(load<int32_t>(e->data));
  KVANT_ASSIGN_OR_RETURN(e, typed(key, ValueType::i64));
  return load<int64_t>(e->data);
}

Result<float> Metadata::get_f32(std::string_view key) const {
  KVANT_ASSIGN_OR_RETURN(const MetaEntry* e, typed(key, ValueType::f32));
  return load<float>(e->data);
}

Result<std::string_view> Metadata::get_string(std::string_view key) const {
  KVANT_ASSIGN_OR_RETURN(const MetaEntry* e, typed(key, ValueType::string));
  return std::string_view(reinterpret_cast<const char*>(e->data), e->size);
}

Result<std::vector<uint32_t>> Metadata::get_u32_array(std::string_view key) const {
  KVANT_ASSIGN_OR_RETURN(const MetaEntry* e, typed_array(key, ValueType::u32));
  return load_array<uint32_t>(*e);
}

Result<std::vector<int32_t>> Metadata::get_i32_array(std::string_view key) const {
  KVANT_ASSIGN_OR_RETURN(const MetaEntry* e, typed_array(key, ValueType::i32));
  return load_array<int32_t>(*e);
}

Result<std::vector<float>> Metadata::get_f32_array(std::string_view key) const {
  KVANT_ASSIGN_OR_RETURN(const MetaEntry* e, typed_array(key, ValueType::f32));
  return load_array<float>(*e);
}

Result<std::vector<std::string_view>> Metadata::get_string_array(std::string_view key) const {
  KVANT_ASSIGN_OR_RETURN(const MetaEntry* e, typed_array(key, ValueType::string));
  std::vector<std::string_view> out;
  out.reserve(e->count);
  const uint8_t* p = e->data;
  for (uint64_t i = 0; i < e->count; ++i) {  // validated at open: every length is in bounds
    const auto len = load<uint32_t>(p);
    out.emplace_back(reinterpret_cast<const char*>(p + 4), len);
    p += 4 + len;
  }
  return out;
}

Result<bool> Metadata::get_bool_or(std::string_view key, bool fallback) const {
  return has(key) ? get_bool(key) : Result<bool>(fallback);
}
Result<uint32_t> Metadata::get_u32_or(std::string_view key, uint32_t fallback) const {
  return has(key) ? get_u32(key) : Result<uint32_t>(fallback);
}
Result<float> Metadata::get_f32_or(std::string_view key, float fallback) const {
  return has(key) ? get_f32(key) : Result<float>(fallback);
}
Result<std::string_view> Metadata::get_string_or(std::string_view key, std::string_view fallback) const {
  return has(key) ? get_string(key) : Result<std::string_view>(fallback);
}

namespace {
std::string describe_scalar(ValueType t, const uint8_t* p) {
  switch (t) {
    case ValueType::boolean: return p[0] ? "true" : "false";
    case ValueType::u32: return fmt::format("{}", load<uint32_t>(p));
    case ValueType::i32: return fmt::format("{}", load<int32_t>(p));
    case ValueType::u64: return fmt::format("{}", load<uint64_t>(p));
    case ValueType::i64: return fmt::format("{}", load<int64_t>(p));
    case ValueType::f32: return fmt::format("{}", load<float>(p));
    case ValueType::f64: return fmt::format("{}", load<double>(p));
    default: return "?";
  }
}

size_t scalar_size(ValueType t) {
  switch (t) {
    case ValueType::boolean: return 1;
    case ValueType::u32: case ValueType::i32: case ValueType::f32: return 4;
    default: return 8;
  }
}

std::string quoted_escaped(std::string_view s, size_t max_chars) {
  std::string out = "\"";
  for (char c : s) {
    if (out.size() >= max_chars) {
      out += "…";
      break;
    }
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '"') out += "\\\"";
    else if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
    else out += c;
  }
  out += "\"";
  return out;
}
}  // namespace

std::string Metadata::describe(const MetaEntry& e, size_t max_chars) {
  if (e.type == ValueType::string)
    return quoted_escaped(std::string_view(reinterpret_cast<const char*>(e.data), e.size), max_chars);
  if (e.type != ValueType::array) return describe_scalar(e.type, e.data);
  std::string out = fmt::format("[{} × {}] ", e.count, value_type_name(e.element_type));
  const uint8_t* p = e.data;
  for (uint64_t i = 0; i < e.count; ++i) {
    if (out.size() >= max_chars) {
      out += "…";
      break;
    }
    if (i) out += ", ";
    if (e.element_type == ValueType::string) {
      const auto len = load<uint32_t>(p);
      out += quoted_escaped(std::string_view(reinterpret_cast<const char*>(p + 4), len), 24);
      p += 4 + len;
    } else {
      out += describe_scalar(e.element_type, p);
      p += scalar_size(e.element_type);
    }
  }
  return out;
}

}  // namespace kvant
