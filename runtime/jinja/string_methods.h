// Python's str methods, on UTF-8 strings indexed by character as Python indexes them.
// Case mapping is utf8proc's single-character mapping (Python's multi-character
// special cases such as 'ß'.upper() == 'SS' are not reproduced).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/jinja/value.h"

namespace kvant::jinja {

std::string utf8_of(char32_t c);
std::string upper(std::string_view s);
std::string lower(std::string_view s);
std::string capitalize(std::string_view s);    // str.capitalize
std::string python_title(std::string_view s);  // str.title
// str.strip / lstrip / rstrip: `chars` null strips whitespace, else those characters.
std::string strip(std::string_view s, const std::string* chars);
std::string lstrip(std::string_view s, const std::string* chars);
std::string rstrip(std::string_view s, const std::string* chars);
// str.split / str.rsplit (sep null: runs of whitespace)
std::vector<std::string> split(std::string_view s, const std::string* sep, int64_t maxsplit, bool from_right);
std::vector<std::string> splitlines(std::string_view s);
std::string replace(std::string_view s, std::string_view old, std::string_view replacement, int64_t count);
int64_t count(std::string_view s, std::string_view sub);
int64_t find_chars(std::string_view s, std::string_view sub);   // character index or -1
int64_t rfind_chars(std::string_view s, std::string_view sub);  // character index or -1
// isdigit / isalpha / isalnum / isspace: true when non-empty and every character passes.
bool char_class_all(std::string_view s, std::string_view method);
bool is_lower(std::string_view s);
bool is_upper(std::string_view s);
// str.format with {}, {0}, {name}, !r/!s conversions and {{ }} escapes (no format specs).
std::string format(std::string_view pattern, const CallArgs& args);

}  // namespace kvant::jinja
