// A small Jinja interpreter for chat templates: the subset of Jinja (and of Python's
// str/list/dict methods) that Hugging Face chat templates use, rendered the way
// transformers' apply_chat_template renders them (ImmutableSandboxedEnvironment with
// trim_blocks, lstrip_blocks and loop controls).
//
// Not supported (an error at parse time): {% call %}, {% include %} and other
// multi-template tags, recursive loops, *args/**kwargs in calls.
// Never crashes on bad input: errors are jinja::Error with a message, and rendering
// has limits on time, output size and nesting.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "runtime/jinja/ast.h"
#include "runtime/jinja/value.h"

namespace kvant::jinja {

class Template {
 public:
  // Throws Error on a syntax error.
  static Template parse(std::string_view source);
  // `context` is a dict of the variables the template sees. Throws Error.
  std::string render(const Value& context) const;

 private:
  std::shared_ptr<const Body> body_;
};

}  // namespace kvant::jinja
