// Strict UTF-8 validation (RFC 3629): no overlong forms, no surrogates, nothing above
// U+10FFFF. Every string a .kvant reader hands out has passed this check.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kvant {

// Length in bytes of the valid UTF-8 sequence at the start of s, or 0 if s does not
// start with one (including when s is empty).
inline size_t utf8_sequence_length(std::string_view s) {
  if (s.empty()) return 0;
  const auto b0 = static_cast<uint8_t>(s[0]);
  if (b0 < 0x80) return 1;
  size_t n = 0;
  uint8_t lo = 0x80, hi = 0xbf;  // allowed range of the second byte
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    n = 2;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    n = 3;
    if (b0 == 0xe0) lo = 0xa0;        // no overlongs
    if (b0 == 0xed) hi = 0x9f;        // no surrogates
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    n = 4;
    if (b0 == 0xf0) lo = 0x90;        // no overlongs
    if (b0 == 0xf4) hi = 0x8f;        // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (s.size() < n) return 0;
  const auto b1 = static_cast<uint8_t>(s[1]);
  if (b1 < lo || b1 > hi) return 0;
  for (size_t i = 2; i < n; ++i) {
    const auto b = static_cast<uint8_t>(s[i]);
    if (b < 0x80 || b > 0xbf) return 0;
  }
  return n;
}

inline bool is_valid_utf8(std::string_view s) {
  while (!s.empty()) {
    size_t i = 0;
    while (i < s.size() && static_cast<uint8_t>(s[i]) < 0x80) ++i;  // ASCII run
    s.remove_prefix(i);
    if (s.empty()) break;
    const size_t n = utf8_sequence_length(s);
    if (n == 0) return false;
    s.remove_prefix(n);
  }
  return true;
}

}  // namespace kvant
