// The Jinja lexer, configured as transformers configures Jinja for chat templates:
// trim_blocks and lstrip_blocks on, trailing newline dropped, newlines normalized to
// \n. Whitespace control ({%- -%} {{- -}} {#- -#}, {%+ +%}) is applied here, so the
// parser sees text exactly as it will be output.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvant::jinja {

struct Token {
  enum class Type {
    text,            // template data, output as is
    variable_begin,  // {{
    variable_end,    // }}
    block_begin,     // {%
    block_end,       // %}
    name,
    string,  // value holds the decoded literal
    integer,
    floating,
    op,  // value holds the operator: + - * / // % ** ~ [ ] ( ) { } == != < <= > >= = . : | , ;
    eof,
  };
  Type type = Type::eof;
  std::string value;
  int line = 1;
};

// Throws jinja::Error on malformed templates (unclosed tags, bad strings, ...).
std::vector<Token> lex(std::string_view source);

}  // namespace kvant::jinja
