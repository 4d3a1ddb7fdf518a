#include "runtime/jinja/value.h"

#include <utf8proc.h>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>

#include "runtime/tokenizer/unicode.h"

namespace kvant::jinja {

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k.is_string() && k.as_string() == key) return &v;
  return nullptr;
}

const Value* Dict::find_key(const Value& key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void Dict::set(Value key, Value value) {
  for (auto& [k, v] : items)
    if (k == key) {
      v = std::move(value);
      return;
    }
  items.emplace_back(std::move(key), std::move(value));
}

const Value* CallArgs::get(size_t position, std::string_view name) const {
  for (const auto& [k, v] : keyword)
    if (k == name) return &v;
  return position < positional.size() ? &positional[position] : nullptr;
}

Value Value::list(std::vector<Value> items, bool tuple) {
  auto l = std::make_shared<List>();
  l->items = std::move(items);
  l->tuple = tuple;
  return Value(std::shared_ptr<const List>(std::move(l)));
}

Value Value::dict(std::vector<std::pair<Value, Value>> items) {
  auto d = std::make_shared<Dict>();
  d->items = std::move(items);
  return Value(std::move(d));
}

Value Value::from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return none();
    case nlohmann::ordered_json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      if (u <= static_cast<uint64_t>(INT64_MAX)) return Value(static_cast<int64_t>(u));
      return Value(static_cast<double>(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      std::vector<Value> items;
      for (const auto& e : j) items.push_back(from_json(e));
      return list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      std::vector<std::pair<Value, Value>> items;
      for (const auto& [k, v] : j.items()) items.emplace_back(Value(k), from_json(v));
      return dict(std::move(items));
    }
    default: return none();  // binary and discarded values do not come from JSON text
  }
}

bool Value::truthy() const {
  switch (kind()) {
    case Kind::undefined:
    case Kind::none: return false;
    case Kind::boolean: return as_bool();
    case Kind::integer: return as_int() != 0;
    case Kind::floating: return as_float() != 0.0;
    case Kind::string: return !as_string().empty();
    case Kind::list: return !as_list().items.empty();
    case Kind::dict: return as_dict().is_namespace || !as_dict().items.empty();
    case Kind::function: return true;
  }
  return false;
}

std::string Value::type_name() const {
  switch (kind()) {
    case Kind::undefined: return "Undefined";
    case Kind::none: return "NoneType";
    case Kind::boolean: return "bool";
    case Kind::integer: return "int";
    case Kind::floating: return "float";
    case Kind::string: return "str";
    case Kind::list: return as_list().tuple ? "tuple" : "list";
    case Kind::dict: return as_dict().is_namespace ? "Namespace" : "dict";
    case Kind::function: return "function";
  }
  return "object";
}

std::string python_float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  const std::string s(buf, res.ptr);  // "-1.2345e+17": shortest round-trip digits
  const size_t e_pos = s.find('e');
  const bool negative = s[0] == '-';
  std::string digits;
  for (size_t i = negative ? 1 : 0; i < e_pos; ++i)
    if (s[i] != '.') digits += s[i];
  const int exponent = std::stoi(s.substr(e_pos + 1));
  std::string out = negative ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out += "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
    } else {
      const auto int_digits = static_cast<size_t>(exponent + 1);
      if (digits.size() <= int_digits) {
        out += digits + std::string(int_digits - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, int_digits) + "." + digits.substr(int_digits);
      }
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  out += exponent < 0 ? "e-" : "e+";
  const int a = std::abs(exponent);
  if (a < 10) out += '0';
  out += std::to_string(a);
  return out;
}

std::vector<std::string_view> utf8_chars(std::string_view s) {
  std::vector<std::string_view> chars;
  for (size_t i = 0; i < s.size();) {
    const size_t n = std::min(tok::utf8_length(static_cast<uint8_t>(s[i])), s.size() - i);
    chars.push_back(s.substr(i, n));
    i += n;
  }
  return chars;
}

bool python_is_space(char32_t c) {
  if ((c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20)) return true;
  return c >= 0x80 && tok::is_white_space(c);
}

namespace {

bool python_is_printable(char32_t c) {
  if (c == ' ') return true;
  if (c < 0x20 || c == 0x7f) return false;
  if (c < 0x7f) return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_CC: case UTF8PROC_CATEGORY_CF: case UTF8PROC_CATEGORY_CS: case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN: case UTF8PROC_CATEGORY_ZL: case UTF8PROC_CATEGORY_ZP: case UTF8PROC_CATEGORY_ZS:
      return false;
    default:
      return true;
  }
}

std::string string_repr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (size_t pos = 0; pos < s.size();) {
    const size_t start = pos;
    const char32_t c = tok::next_code_point(s, pos);
    if (c == '\\') out += "\\\\";
    else if (c == static_cast<char32_t>(quote)) (out += '\\') += quote;
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (python_is_printable(c)) out.append(s, start, pos - start);
    else if (c < 0x100) out += fmt::format("\\x{:02x}", static_cast<uint32_t>(c));
    else if (c < 0x10000) out += fmt::format("\\u{:04x}", static_cast<uint32_t>(c));
    else out += fmt::format("\\U{:08x}", static_cast<uint32_t>(c));
  }
  out += quote;
  return out;
}

void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (size_t pos = 0; pos < s.size();) {
    const size_t start = pos;
    const char32_t c = tok::next_code_point(s, pos);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<uint32_t>(c));
        } else if (ensure_ascii && c > 0x7f) {
          if (c < 0x10000) {
            out += fmt::format("\\u{:04x}", static_cast<uint32_t>(c));
          } else {
            const uint32_t v = c - 0x10000;
            out += fmt::format("\\u{:04x}\\u{:04x}", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
          }
        } else {
          out.append(s, start, pos - start);
        }
    }
  }
  out += '"';
}

std::string json_float(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
  return python_float_repr(d);
}

void to_json_impl(std::string& out, const Value& v, bool ensure_ascii, int indent, const std::string& item_sep,
                  const std::string& key_sep, bool sort_keys, int level) {
  const auto newline = [&](int lvl) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(indent * lvl), ' ');
  };
  switch (v.kind()) {
    case Value::Kind::none: out += "null"; return;
    case Value::Kind::boolean: out += v.as_bool() ? "true" : "false"; return;
    case Value::Kind::integer: out += std::to_string(v.as_int()); return;
    case Value::Kind::floating: out += json_float(v.as_float()); return;
    case Value::Kind::string: json_string(out, v.as_string(), ensure_ascii); return;
    case Value::Kind::list: {
      const auto& items = v.as_list().items;
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out += item_sep;
        newline(level + 1);
        to_json_impl(out, items[i], ensure_ascii, indent, item_sep, key_sep, sort_keys, level + 1);
      }
      newline(level);
      out += ']';
      return;
    }
    case Value::Kind::dict: {
      if (v.as_dict().is_namespace) throw Error("Object of type Namespace is not JSON serializable");
      std::vector<std::pair<std::string, const Value*>> entries;
      for (const auto& [k, item] : v.as_dict().items) {
        std::string key;
        if (k.is_string()) key = k.as_string();
        else if (k.is_bool()) key = k.as_bool() ? "true" : "false";
        else if (k.is_int()) key = std::to_string(k.as_int());
        else if (k.is_float()) key = json_float(k.as_float());
        else if (k.is_none()) key = "null";
        else throw Error("keys must be str, int, float, bool or None, not " + k.type_name());
        entries.emplace_back(std::move(key), &item);
      }
      if (sort_keys)
        std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      if (entries.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i > 0) out += item_sep;
        newline(level + 1);
        json_string(out, entries[i].first, ensure_ascii);
        out += key_sep;
        to_json_impl(out, *entries[i].second, ensure_ascii, indent, item_sep, key_sep, sort_keys, level + 1);
      }
      newline(level);
      out += '}';
      return;
    }
    case Value::Kind::undefined: throw Error("Object of type Undefined is not JSON serializable");
    case Value::Kind::function: throw Error("Object of type function is not JSON serializable");
  }
}

}  // namespace

std::string Value::str() const {
  switch (kind()) {
    case Kind::undefined: return "";
    case Kind::string: return as_string();
    case Kind::dict:
      if (as_dict().is_namespace) {
        std::string out = "<Namespace {";
        bool first = true;
        for (const auto& [k, v] : as_dict().items) {
          if (!first) out += ", ";
          first = false;
          out += k.repr() + ": " + v.repr();
        }
        return out + "}>";
      }
      return repr();
    default: return repr();
  }
}

std::string Value::repr() const {
  switch (kind()) {
    case Kind::undefined: return "Undefined";
    case Kind::none: return "None";
    case Kind::boolean: return as_bool() ? "True" : "False";
    case Kind::integer: return std::to_string(as_int());
    case Kind::floating: return python_float_repr(as_float());
    case Kind::string: return string_repr(as_string());
    case Kind::list: {
      const List& l = as_list();
      std::string out = l.tuple ? "(" : "[";
      for (size_t i = 0; i < l.items.size(); ++i) {
        if (i > 0) out += ", ";
        out += l.items[i].repr();
      }
      if (l.tuple && l.items.size() == 1) out += ",";
      return out + (l.tuple ? ")" : "]");
    }
    case Kind::dict: {
      if (as_dict().is_namespace) return str();
      std::string out = "{";
      bool first = true;
      for (const auto& [k, v] : as_dict().items) {
        if (!first) out += ", ";
        first = false;
        out += k.repr() + ": " + v.repr();
      }
      return out + "}";
    }
    case Kind::function: return "<function " + as_function().name + ">";
  }
  return "";
}

std::string Value::to_json(bool ensure_ascii, int indent, const std::string& item_sep, const std::string& key_sep,
                           bool sort_keys) const {
  std::string out;
  to_json_impl(out, *this, ensure_ascii, indent, item_sep, key_sep, sort_keys, 0);
  return out;
}

bool operator==(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_float() == b.as_float();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::undefined:
    case Value::Kind::none: return true;
    case Value::Kind::string: return a.as_string() == b.as_string();
    case Value::Kind::list: {
      const List& x = a.as_list();
      const List& y = b.as_list();
      if (x.tuple != y.tuple || x.items.size() != y.items.size()) return false;
      for (size_t i = 0; i < x.items.size(); ++i)
        if (!(x.items[i] == y.items[i])) return false;
      return true;
    }
    case Value::Kind::dict: {
      const Dict& x = a.as_dict();
      const Dict& y = b.as_dict();
      if (x.is_namespace || y.is_namespace) return &x == &y;
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, v] : x.items) {
        const Value* other = y.find_key(k);
        if (!other || !(*other == v)) return false;
      }
      return true;
    }
    case Value::Kind::function: return &a.as_function() == &b.as_function();
    default: return false;
  }
}

bool Value::less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_float() < b.as_float();
    return a.as_int() < b.as_int();
  }
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();  // UTF-8 order = code point order
  if (a.is_list() && b.is_list() && a.as_list().tuple == b.as_list().tuple) {
    const auto& x = a.as_list().items;
    const auto& y = b.as_list().items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!(x[i] == y[i])) return less(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  throw Error(fmt::format("'<' not supported between instances of '{}' and '{}'", a.type_name(), b.type_name()));
}

size_t Value::length() const {
  switch (kind()) {
    case Kind::undefined: return 0;
    case Kind::string: return utf8_chars(as_string()).size();
    case Kind::list: return as_list().items.size();
    case Kind::dict: return as_dict().items.size();
    default: throw Error(fmt::format("object of type '{}' has no len()", type_name()));
  }
}

std::vector<Value> Value::iterate() const {
  switch (kind()) {
    case Kind::undefined: return {};
    case Kind::list: return as_list().items;
    case Kind::dict: {
      if (as_dict().is_namespace) break;
      std::vector<Value> keys;
      for (const auto& [k, v] : as_dict().items) keys.push_back(k);
      return keys;
    }
    case Kind::string: {
      std::vector<Value> chars;
      for (std::string_view c : utf8_chars(as_string())) chars.emplace_back(std::string(c));
      return chars;
    }
    default: break;
  }
  throw Error(fmt::format("'{}' object is not iterable", type_name()));
}

}  // namespace kvant::jinja
