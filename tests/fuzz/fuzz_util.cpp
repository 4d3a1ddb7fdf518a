#include "tests/fuzz/fuzz_util.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "convert/hf_tokenizer.h"
#include "format/writer.h"

namespace kvant::fuzz {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(1);
  }
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string fixture_path(const std::string& relative) { return std::string(KVANT_FUZZ_FIXTURES) + "/" + relative; }

std::vector<uint8_t> kvant_image(const std::function<Status(KvantWriter&)>& fill) {
  char path[] = "/tmp/kvant-fuzz-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return {};
  close(fd);
  std::vector<uint8_t> bytes;
  {
    KvantWriter w(path);
    if (fill(w) && w.commit()) {
      const std::string s = read_file(path);
      bytes.assign(s.begin(), s.end());
    }
  }
  unlink(path);
  return bytes;
}

std::vector<uint8_t> tokenizer_image(const std::string& tokenizer_json) {
  auto imported = convert::parse_tokenizer_json(tokenizer_json, "fuzz");
  if (!imported) return {};
  return kvant_image([&](KvantWriter& w) {
    w.set("general.name", std::string("fuzz"));
    imported->to_metadata(w);
    return w.begin();
  });
}

namespace {

std::unique_ptr<LoadedTokenizer> load(const std::string& tokenizer_json) {
  auto t = std::make_unique<LoadedTokenizer>();
  t->image = tokenizer_image(tokenizer_json);
  auto file = KvantFile::from_memory(t->image);
  if (!file) {
    std::fprintf(stderr, "fuzz setup: %s\n", file.status().message().c_str());
    std::exit(1);
  }
  t->file = std::move(*file);
  auto tok = Tokenizer::from_metadata(t->file->metadata());
  if (!tok) {
    std::fprintf(stderr, "fuzz setup: %s\n", tok.status().message().c_str());
    std::exit(1);
  }
  t->tokenizer = std::move(*tok);
  return t;
}

}  // namespace

std::vector<std::unique_ptr<LoadedTokenizer>>& fixture_tokenizers() {
  static std::vector<std::unique_ptr<LoadedTokenizer>> all = [] {
    using nlohmann::ordered_json;
    const std::string dir = fixture_path("tokenizers/");
    std::vector<std::unique_ptr<LoadedTokenizer>> v;
    for (const char* name : {"tok-bytelevel-gpt2", "tok-bytelevel-llama3", "tok-bytelevel-qwen2", "tok-sentencepiece"})
      v.push_back(load(read_file(dir + name + "/tokenizer.json")));
    // SentencePiece with the Metaspace pre-tokenizer and decoder (Llama-2 as transformers writes it now).
    ordered_json sp = ordered_json::parse(read_file(dir + "tok-sentencepiece/tokenizer.json"));
    sp["normalizer"] = nullptr;
    sp["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}, {"split", true}};
    sp["decoder"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}, {"split", true}};
    v.push_back(load(sp.dump()));
    // Byte-level with added tokens using every flag and a NFKC + Lowercase normalizer.
    ordered_json bl = ordered_json::parse(read_file(dir + "tok-bytelevel-gpt2/tokenizer.json"));
    bl["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFKC"}}, {{"type", "Lowercase"}}}}};
    int id = 459;
    for (const auto& [content, flag] : std::vector<std::pair<std::string, std::string>>{
             {"<sep>", "lstrip"}, {"cat", "single_word"}, {"[R]", "rstrip"}, {"Hello", "normalized"}}) {
      ordered_json a = {{"id", id++}, {"content", content}, {"single_word", false}, {"lstrip", false},
                        {"rstrip", false}, {"normalized", false}, {"special", false}};
      a[flag] = true;
      bl["added_tokens"].push_back(a);
    }
    v.push_back(load(bl.dump()));
    return v;
  }();
  return all;
}

}  // namespace kvant::fuzz
