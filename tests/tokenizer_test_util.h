// Helpers for the tokenizer and chat-template suites: goldens from tests/data/tokenizer
// (gzip or plain JSON) and tokenizers loaded the way a .kvant file carries them.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "format/reader.h"
#include "runtime/tokenizer.h"

namespace kvant::test {

// tests/data/tokenizer/<name> (".gz" files are decompressed); key order preserved.
nlohmann::ordered_json load_golden(const std::string& name);

// A metadata-only .kvant file written from a tokenizer through the converter's own
// importer (kvant-convert's code path), then read back.
struct TokenizerFile {
  std::unique_ptr<KvantFile> file;
  std::unique_ptr<Tokenizer> tokenizer;
  const Metadata& metadata() const { return file->metadata(); }
};
// A Hugging Face directory with tokenizer.json (and tokenizer_config.json, ...).
TokenizerFile load_tokenizer_dir(const std::string& dir);
// tokenizer.json text alone.
TokenizerFile load_tokenizer_json(const std::string& tokenizer_json, const std::string& tag);

std::string read_text(const std::string& path);
// The string as a JSON literal, for readable failure messages.
std::string quoted(const std::string& s);

}  // namespace kvant::test
