// kvant-tokenize: the tokenizer and chat template of a .kvant file, from the command line.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "format/reader.h"
#include "runtime/chat_template.h"
#include "runtime/tokenizer.h"

namespace {

using nlohmann::json;

int fail(const std::string& message) {
  fmt::print(stderr, "kvant-tokenize: {}\n", message);
  return 1;
}

std::string read_stdin() {
  std::string s((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  return s;
}

// JSON output must stay valid even for text with invalid UTF-8 (decode never makes
// any, but be safe): replace instead of throwing.
std::string to_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void print_ids(const std::vector<int32_t>& ids, bool as_json) {
  if (as_json) {
    fmt::print("{}\n", to_json(ids));
    return;
  }
  fmt::print("{}\n", fmt::join(ids, " "));
}

// Ids from "1 2 3", "1,2,3" or "[1, 2, 3]".
kvant::Result<std::vector<int32_t>> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c == '-' || (c >= '0' && c <= '9')) {
      size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(text.substr(i, 24), &used);
      } catch (const std::exception&) {
        return kvant::Status::error(kvant::ErrorCode::invalid_argument, "'{}' is not a token id", text.substr(i, 24));
      }
      if (v < INT32_MIN || v > INT32_MAX)
        return kvant::Status::error(kvant::ErrorCode::invalid_argument, "token id {} is out of range", v);
      ids.push_back(static_cast<int32_t>(v));
      i += used;
    } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' || c == '[' || c == ']') {
      ++i;
    } else {
      return kvant::Status::error(kvant::ErrorCode::invalid_argument,
                                  "unexpected '{}' at offset {}: give token ids as numbers separated by spaces or "
                                  "commas, or as a JSON array",
                                  c, i);
    }
  }
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Tokenizes text with the tokenizer stored in a .kvant file (ids equal the Hugging Face tokenizers library's), "
      "decodes ids, and renders chats through the model's chat template.\n\n"
      "  kvant-tokenize model.kvant --text 'Hello world'        ids, space-separated\n"
      "  printf 'Hello' | kvant-tokenize model.kvant --json     ids as a JSON array (stdin is read exactly)\n"
      "  echo '9906 1917' | kvant-tokenize model.kvant --decode  ids back to text\n"
      "  echo '[{\"role\":\"user\",\"content\":\"Hi\"}]' | kvant-tokenize model.kvant --chat --show-text\n"};
  std::string model_path, text;
  bool have_text = false, as_json = false, decode = false, no_special = false, skip_special = false;
  bool chat = false, show_text = false, no_generation_prompt = false, batch = false, show_tokens = false;
  std::string template_name;
  app.add_option("model", model_path, "the .kvant file")->required()->check(CLI::ExistingFile);
  app.add_option("--text,-t", text, "the input (default: all of stdin, byte for byte)")
      ->each([&](const std::string&) { have_text = true; });
  app.add_flag("--json", as_json, "print JSON: an array of ids, or for --decode a JSON string");
  app.add_flag("--decode,-d", decode, "read token ids (spaces, commas or a JSON array) and print their text");
  app.add_flag("--no-special", no_special,
               "encode without the special tokens the tokenizer adds (e.g. Llama's BOS); with --chat this is "
               "always so, as in transformers");
  app.add_flag("--skip-special", skip_special, "with --decode: leave special tokens out of the text");
  app.add_flag("--tokens", show_tokens, "print each id with its token text, one per line");
  app.add_flag("--chat", chat,
               "the input is a JSON list of messages [{\"role\": ..., \"content\": ...}]: render it with the chat "
               "template (with the assistant generation prompt), then tokenize");
  app.add_option("--chat-template", template_name,
                 fmt::format("with --chat: use a built-in template instead of the file's ({})",
                             fmt::join(kvant::ChatTemplate::builtin_names(), ", ")));
  app.add_flag("--no-generation-prompt", no_generation_prompt, "with --chat: leave out the generation prompt");
  app.add_flag("--show-text", show_text, "with --chat: print the rendered text instead of ids");
  app.add_flag("--batch", batch,
               "the input is a JSON array of strings; print a JSON array with the ids of each (for scripts)");
  CLI11_PARSE(app, argc, argv);

  auto file = kvant::KvantFile::open(model_path);
  if (!file) return fail(file.status().message());
  auto tokenizer = kvant::Tokenizer::from_metadata((*file)->metadata());
  if (!tokenizer) return fail(fmt::format("{}: {}", model_path, tokenizer.status().message()));
  const kvant::Tokenizer& tok = **tokenizer;
  const std::string input = have_text ? text : read_stdin();

  if (decode) {
    auto ids = parse_ids(input);
    if (!ids) return fail(ids.status().message());
    const std::string out = tok.decode(*ids, skip_special);
    if (as_json) fmt::print("{}\n", to_json(out));
    else fmt::print("{}{}", out, isatty(STDOUT_FILENO) ? "\n" : "");
    return 0;
  }

  if (batch) {
    const json list = json::parse(input, nullptr, false);
    if (!list.is_array()) return fail("--batch needs a JSON array of strings on the input");
    json out = json::array();
    for (const json& s : list) {
      if (!s.is_string()) return fail("--batch: every element must be a string");
      auto ids = tok.encode(s.get<std::string>(), !no_special);
      if (!ids) return fail(ids.status().message());
      out.push_back(*ids);
    }
    fmt::print("{}\n", to_json(out));
    return 0;
  }

  std::string to_encode = input;
  bool add_special = !no_special;
  if (chat) {
    const nlohmann::ordered_json messages = nlohmann::ordered_json::parse(input, nullptr, false);  // key order kept
    if (messages.is_discarded()) return fail("--chat: the input is not valid JSON");
    auto tmpl = template_name.empty() ? kvant::ChatTemplate::from_metadata((*file)->metadata())
                                      : kvant::ChatTemplate::builtin(template_name, (*file)->metadata());
    if (!tmpl) return fail(tmpl.status().message());
    auto rendered = (*tmpl)->render(messages, !no_generation_prompt);
    if (!rendered) return fail(rendered.status().message());
    if (show_text) {
      fmt::print("{}", as_json ? to_json(*rendered) + "\n" : *rendered);
      return 0;
    }
    to_encode = *rendered;
    add_special = false;  // the template writes the special tokens itself
  }
  auto ids = tok.encode(to_encode, add_special);
  if (!ids) return fail(ids.status().message());
  if (show_tokens) {
    for (int32_t id : *ids) fmt::print("{:>8}  {}\n", id, to_json(std::string(tok.token_text(id))));
    return 0;
  }
  print_ids(*ids, as_json);
  return 0;
}
