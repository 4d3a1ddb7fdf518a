// Shared setup for the fuzz targets: tokenizers built from the fixture tokenizer.json
// files through the converter's importer, held in memory as .kvant images, and helpers
// that let mutations reach the parsers behind checksums.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "format/reader.h"
#include "runtime/tokenizer.h"

namespace kvant {
class KvantWriter;
}

namespace kvant::fuzz {

struct LoadedTokenizer {
  std::vector<uint8_t> image;  // the .kvant bytes the file and tokenizer point into
  std::unique_ptr<KvantFile> file;
  std::unique_ptr<Tokenizer> tokenizer;
};

// The bytes of a .kvant file that `fill` describes (metadata and tensors, whose bytes
// it writes after begin()); empty when the writer refuses it.
std::vector<uint8_t> kvant_image(const std::function<Status(KvantWriter&)>& fill);

// A .kvant image with the tokenizer metadata of tokenizer.json text (no tensors);
// empty when the converter rejects the text.
std::vector<uint8_t> tokenizer_image(const std::string& tokenizer_json);

// The fixture tokenizers (gpt2, llama3, qwen2, sentencepiece) plus variants with
// Metaspace and flagged added tokens. Exits on failure: the fuzzer cannot run without.
std::vector<std::unique_ptr<LoadedTokenizer>>& fixture_tokenizers();

std::string read_file(const std::string& path);
std::string fixture_path(const std::string& relative);  // tests/data/fixtures/<relative>

}  // namespace kvant::fuzz
