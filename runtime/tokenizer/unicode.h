// Unicode helpers for the tokenizer: UTF-8 coding, the character classes that the
// Hugging Face `tokenizers` library (Rust) uses, its lossy UTF-8 decoding, and GPT-2's
// byte-to-character table. Character properties come from utf8proc.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvant::tok {

// Code point at s[pos] (s must be valid UTF-8); advances pos past it.
char32_t next_code_point(std::string_view s, size_t& pos);
// Code point ending at s[pos - 1] (s valid UTF-8); moves pos back to its first byte.
char32_t previous_code_point(std::string_view s, size_t& pos);
void append_utf8(std::string& out, char32_t cp);
// Bytes of the UTF-8 sequence that starts with `lead` (1 for continuation bytes).
inline size_t utf8_length(uint8_t lead) {
  return lead < 0xc0 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
}

// Offset of the first byte that is not part of valid UTF-8, or npos when all is valid.
size_t find_invalid_utf8(std::string_view s);

// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes one U+FFFD.
std::string lossy_utf8(std::string_view bytes);

// Character classes, as Rust's char methods and regex classes define them.
bool is_white_space(char32_t c);  // Unicode White_Space (char::is_whitespace, regex \s)
bool is_numeric(char32_t c);      // general category Nd, Nl or No (char::is_numeric)
bool is_word_char(char32_t c);    // regex \w: alphabetic, marks, Nd, Pc, joiners
// char::to_lowercase of one character (full mapping: U+0130 becomes two characters).
void append_lowercase(std::string& out, char32_t c);

// GPT-2's reversible byte-to-character table (bytes_to_unicode): printable Latin-1
// bytes map to themselves, the other 68 bytes to U+0100.., so every byte is a visible
// character. byte_char[b] is the character's UTF-8 (1 or 2 bytes).
struct ByteLevelTable {
  std::array<char32_t, 256> byte_to_char{};
  std::array<std::string, 256> byte_char;
  // The byte a character stands for, or -1 when it is not one of the 256.
  int char_to_byte(char32_t c) const {
    if (c < 0x100) return char_byte_low[c];
    if (c < 0x100 + 68) return char_byte_high[c - 0x100];
    return -1;
  }
  std::array<int16_t, 256> char_byte_low{};
  std::array<int16_t, 68> char_byte_high{};
};
const ByteLevelTable& byte_level_table();

}  // namespace kvant::tok
