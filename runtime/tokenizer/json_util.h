// Small readers for the tokenizer.json component objects stored in .kvant metadata:
// each failure names the metadata key and the field at fault.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "format/status.h"
#include "runtime/tokenizer/regex.h"
#include "runtime/tokenizer/unicode.h"

namespace kvant::tok {

// Nesting limit for Sequence components (a hostile file must not exhaust the stack).
constexpr int kMaxComponentDepth = 32;

inline Result<std::string> component_type(const nlohmann::json& j, std::string_view where) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    return Status::error(ErrorCode::format, "{}: a component is not an object with a string 'type': {:.80}", where,
                         j.dump());
  return j["type"].get<std::string>();
}

inline Result<bool> json_bool(const nlohmann::json& j, const char* key, bool fallback, std::string_view where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) return Status::error(ErrorCode::format, "{}: '{}' is not a boolean", where, key);
  return j[key].get<bool>();
}

inline Result<std::string> json_string(const nlohmann::json& j, const char* key, std::string_view where) {
  if (!j.contains(key) || !j[key].is_string())
    return Status::error(ErrorCode::format, "{}: {} needs a string '{}'", where,
                         j.contains("type") ? j["type"].dump() : std::string("component"), key);
  return j[key].get<std::string>();
}

// A single-character string field (Metaspace's replacement, Strip's content).
inline Result<std::string> json_char(const nlohmann::json& j, const char* key, std::string_view where) {
  KVANT_ASSIGN_OR_RETURN(std::string s, json_string(j, key, where));
  if (s.empty() || utf8_length(static_cast<uint8_t>(s[0])) != s.size())
    return Status::error(ErrorCode::format, "{}: '{}' must be one character, not '{}'", where, key, s);
  return s;
}

inline Result<size_t> json_count(const nlohmann::json& j, const char* key, size_t fallback, std::string_view where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number_unsigned() || j[key].get<uint64_t>() > 1'000'000)
    return Status::error(ErrorCode::format, "{}: '{}' is not a small non-negative integer", where, key);
  return static_cast<size_t>(j[key].get<uint64_t>());
}

// {"pattern": {"String": "..."}} or {"pattern": {"Regex": "..."}}.
inline Result<Regex> json_pattern(const nlohmann::json& j, std::string_view where) {
  if (!j.contains("pattern") || !j["pattern"].is_object())
    return Status::error(ErrorCode::format, "{}: a 'pattern' object is missing", where);
  const nlohmann::json& p = j["pattern"];
  if (p.contains("String") && p["String"].is_string()) return Regex::literal(p["String"].get<std::string>(), where);
  if (p.contains("Regex") && p["Regex"].is_string()) return Regex::compile(p["Regex"].get<std::string>(), where);
  return Status::error(ErrorCode::format, "{}: pattern {:.80} is neither {{\"String\": ...}} nor {{\"Regex\": ...}}",
                       where, p.dump());
}

}  // namespace kvant::tok
