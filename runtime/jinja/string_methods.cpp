#include "runtime/jinja/string_methods.h"

#include <utf8proc.h>

#include <fmt/format.h>

#include <algorithm>

#include "runtime/tokenizer/unicode.h"

namespace kvant::jinja {

namespace {

std::vector<char32_t> code_points(std::string_view s) {
  std::vector<char32_t> out;
  for (size_t pos = 0; pos < s.size();) out.push_back(tok::next_code_point(s, pos));
  return out;
}

std::string join(const std::vector<char32_t>& cps, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i) tok::append_utf8(out, cps[i]);
  return out;
}

utf8proc_category_t category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }
bool is_cased_upper(char32_t c) { return category(c) == UTF8PROC_CATEGORY_LU || category(c) == UTF8PROC_CATEGORY_LT; }
bool is_cased_lower(char32_t c) { return category(c) == UTF8PROC_CATEGORY_LL; }
char32_t to_upper(char32_t c) { return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c))); }
char32_t to_lower(char32_t c) { return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))); }
char32_t to_title(char32_t c) { return static_cast<char32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(c))); }

bool in_set(char32_t c, const std::vector<char32_t>* set) {
  if (!set) return python_is_space(c);
  return std::find(set->begin(), set->end(), c) != set->end();
}

std::string strip_impl(std::string_view s, const std::string* chars, bool left, bool right) {
  const std::vector<char32_t> cps = code_points(s);
  std::vector<char32_t> set;
  if (chars) set = code_points(*chars);
  size_t begin = 0, end = cps.size();
  if (left)
    while (begin < end && in_set(cps[begin], chars ? &set : nullptr)) ++begin;
  if (right)
    while (end > begin && in_set(cps[end - 1], chars ? &set : nullptr)) --end;
  return join(cps, begin, end);
}

}  // namespace

std::string utf8_of(char32_t c) {
  std::string s;
  tok::append_utf8(s, c);
  return s;
}

std::string upper(std::string_view s) {
  std::string out;
  for (char32_t c : code_points(s)) tok::append_utf8(out, to_upper(c));
  return out;
}

std::string lower(std::string_view s) {
  std::string out;
  for (char32_t c : code_points(s)) {
    if (c == 0x130) out += "i\xcc\x87";  // Python's full lowercase mapping of U+0130
    else tok::append_utf8(out, to_lower(c));
  }
  return out;
}

std::string capitalize(std::string_view s) {
  const std::vector<char32_t> cps = code_points(s);
  std::string out;
  for (size_t i = 0; i < cps.size(); ++i) tok::append_utf8(out, i == 0 ? to_title(cps[i]) : to_lower(cps[i]));
  return out;
}

std::string python_title(std::string_view s) {
  std::string out;
  bool previous_cased = false;
  for (char32_t c : code_points(s)) {
    const char32_t mapped = previous_cased ? to_lower(c) : to_title(c);
    tok::append_utf8(out, mapped);
    previous_cased = is_cased_upper(c) || is_cased_lower(c);
  }
  return out;
}

std::string strip(std::string_view s, const std::string* chars) { return strip_impl(s, chars, true, true); }
std::string lstrip(std::string_view s, const std::string* chars) { return strip_impl(s, chars, true, false); }
std::string rstrip(std::string_view s, const std::string* chars) { return strip_impl(s, chars, false, true); }

std::vector<std::string> split(std::string_view s, const std::string* sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> parts;
  if (sep) {
    if (sep->empty()) throw Error("empty separator");
    if (!from_right) {
      size_t start = 0;
      while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
        const size_t at = s.find(*sep, start);
        if (at == std::string_view::npos) break;
        parts.emplace_back(s.substr(start, at - start));
        start = at + sep->size();
      }
      parts.emplace_back(s.substr(start));
      return parts;
    }
    size_t end = s.size();
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
      if (end < sep->size()) break;
      const size_t at = s.rfind(*sep, end - sep->size());
      if (at == std::string_view::npos) break;
      parts.emplace_back(s.substr(at + sep->size(), end - at - sep->size()));
      end = at;
    }
    parts.emplace_back(s.substr(0, end));
    std::reverse(parts.begin(), parts.end());
    return parts;
  }
  // Runs of whitespace separate; leading and trailing whitespace make no empty parts.
  const std::vector<char32_t> cps = code_points(s);
  if (!from_right) {
    size_t i = 0;
    while (true) {
      while (i < cps.size() && python_is_space(cps[i])) ++i;
      if (i >= cps.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit) {
        size_t end = cps.size();
        while (end > i && python_is_space(cps[end - 1])) --end;
        parts.push_back(join(cps, i, end));
        break;
      }
      size_t j = i;
      while (j < cps.size() && !python_is_space(cps[j])) ++j;
      parts.push_back(join(cps, i, j));
      i = j;
    }
    return parts;
  }
  size_t i = cps.size();
  while (true) {
    while (i > 0 && python_is_space(cps[i - 1])) --i;
    if (i == 0) break;
    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit) {
      size_t begin = 0;
      while (begin < i && python_is_space(cps[begin])) ++begin;
      parts.push_back(join(cps, begin, i));
      break;
    }
    size_t j = i;
    while (j > 0 && !python_is_space(cps[j - 1])) --j;
    parts.push_back(join(cps, j, i));
    i = j;
  }
  std::reverse(parts.begin(), parts.end());
  return parts;
}

std::vector<std::string> splitlines(std::string_view s) {
  std::vector<std::string> lines;
  const std::vector<char32_t> cps = code_points(s);
  size_t start = 0;
  for (size_t i = 0; i < cps.size(); ++i) {
    const char32_t c = cps[i];
    const bool brk = c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e ||
                     c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) continue;
    lines.push_back(join(cps, start, i));
    if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') ++i;
    start = i + 1;
  }
  if (start < cps.size()) lines.push_back(join(cps, start, cps.size()));
  return lines;
}

std::string replace(std::string_view s, std::string_view old, std::string_view replacement, int64_t count) {
  std::string out;
  int64_t done = 0;
  if (old.empty()) {  // Python inserts the replacement around every character
    const std::vector<char32_t> cps = code_points(s);
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += replacement;
        ++done;
      }
      if (i < cps.size()) tok::append_utf8(out, cps[i]);
    }
    return out;
  }
  size_t start = 0;
  while (count < 0 || done < count) {
    const size_t at = s.find(old, start);
    if (at == std::string_view::npos) break;
    out.append(s.substr(start, at - start));
    out += replacement;
    start = at + old.size();
    ++done;
  }
  out.append(s.substr(start));
  return out;
}

int64_t count(std::string_view s, std::string_view sub) {
  if (sub.empty()) return static_cast<int64_t>(code_points(s).size()) + 1;
  int64_t n = 0;
  for (size_t at = s.find(sub); at != std::string_view::npos; at = s.find(sub, at + sub.size())) ++n;
  return n;
}

int64_t find_chars(std::string_view s, std::string_view sub) {
  const size_t at = s.find(sub);
  if (at == std::string_view::npos) return -1;
  return static_cast<int64_t>(code_points(s.substr(0, at)).size());
}

int64_t rfind_chars(std::string_view s, std::string_view sub) {
  const size_t at = s.rfind(sub);
  if (at == std::string_view::npos) return -1;
  return static_cast<int64_t>(code_points(s.substr(0, at)).size());
}

bool char_class_all(std::string_view s, std::string_view method) {
  const std::vector<char32_t> cps = code_points(s);
  if (cps.empty()) return false;
  for (char32_t c : cps) {
    const auto cat = category(c);
    const bool letter = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
    const bool digit = cat == UTF8PROC_CATEGORY_ND || c == 0xb2 || c == 0xb3 || c == 0xb9 || (c >= 0x2070 && c <= 0x2079);
    const bool number = cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO;
    bool ok = false;
    if (method == "isdigit") ok = digit;
    else if (method == "isalpha") ok = letter;
    else if (method == "isalnum") ok = letter || number;
    else ok = python_is_space(c);
    if (!ok) return false;
  }
  return true;
}

bool is_lower(std::string_view s) {
  bool cased = false;
  for (char32_t c : code_points(s)) {
    if (is_cased_upper(c)) return false;
    cased = cased || is_cased_lower(c);
  }
  return cased;
}

bool is_upper(std::string_view s) {
  bool cased = false;
  for (char32_t c : code_points(s)) {
    if (is_cased_lower(c) || category(c) == UTF8PROC_CATEGORY_LT) return false;
    cased = cased || is_cased_upper(c);
  }
  return cased;
}

std::string format(std::string_view pattern, const CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '}') {
      if (i + 1 < pattern.size() && pattern[i + 1] == '}') ++i;
      else throw Error("Single '}' encountered in format string");
      out += '}';
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < pattern.size() && pattern[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    const size_t close = pattern.find('}', i);
    if (close == std::string_view::npos) throw Error("Single '{' encountered in format string");
    std::string field(pattern.substr(i + 1, close - i - 1));
    i = close;
    char conversion = 's';
    if (const size_t bang = field.find('!'); bang != std::string::npos) {
      if (bang + 2 != field.size() || (field[bang + 1] != 'r' && field[bang + 1] != 's'))
        throw Error("format: only !r and !s conversions are supported");
      conversion = field[bang + 1];
      field.resize(bang);
    }
    if (field.find(':') != std::string::npos) throw Error("format: format specs are not supported");
    const Value* v = nullptr;
    if (field.empty()) {
      v = auto_index < args.positional.size() ? &args.positional[auto_index] : nullptr;
      ++auto_index;
    } else if (std::all_of(field.begin(), field.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
      const size_t n = std::stoul(field);
      v = n < args.positional.size() ? &args.positional[n] : nullptr;
    } else {
      for (const auto& [k, value] : args.keyword)
        if (k == field) v = &value;
    }
    if (!v) throw Error(fmt::format("format: no argument for field '{}'", field));
    out += conversion == 'r' ? v->repr() : v->str();
  }
  return out;
}

}  // namespace kvant::jinja
