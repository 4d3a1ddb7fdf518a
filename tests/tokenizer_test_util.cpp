#include "tests/tokenizer_test_util.h"

#include <zlib.h>

#include <atomic>
#include <stdexcept>

#include "convert/hf_tokenizer.h"
#include "format/writer.h"
#include "tests/test_util.h"

namespace kvant::test {

std::string read_text(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");  // reads plain files too
  if (!f) throw std::runtime_error("cannot open " + path);
  std::string out;
  char buf[1 << 16];
  int n = 0;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  gzclose(f);
  if (n < 0) throw std::runtime_error("cannot read " + path);
  return out;
}

nlohmann::ordered_json load_golden(const std::string& name) {
  return nlohmann::ordered_json::parse(read_text(data_dir() + "/tokenizer/" + name));
}

std::string quoted(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

namespace {

TokenizerFile write_and_load(const convert::TokenizerImport& t, const std::string& tag) {
  static std::atomic<int> counter{0};
  const std::string path = temp_dir() + "/tok-" + tag + "-" + std::to_string(counter++) + ".kvant";
  KvantWriter w(path);
  w.set("general.name", tag);
  t.to_metadata(w);
  Status s = w.begin();
  if (s) s = w.commit();
  if (!s) throw std::runtime_error("writing " + path + ": " + s.message());
  auto file = KvantFile::open(path);
  if (!file) throw std::runtime_error("reading " + path + ": " + file.status().message());
  TokenizerFile out;
  out.file = std::move(*file);
  auto tok = Tokenizer::from_metadata(out.file->metadata());
  if (!tok) throw std::runtime_error("loading the tokenizer of " + tag + ": " + tok.status().message());
  out.tokenizer = std::move(*tok);
  return out;
}

}  // namespace

TokenizerFile load_tokenizer_dir(const std::string& dir) {
  auto t = convert::import_tokenizer(dir, nlohmann::json::object(), 1u << 24);
  if (!t) throw std::runtime_error("importing " + dir + ": " + t.status().message());
  return write_and_load(*t, "dir");
}

TokenizerFile load_tokenizer_json(const std::string& tokenizer_json, const std::string& tag) {
  auto t = convert::parse_tokenizer_json(tokenizer_json, tag);
  if (!t) throw std::runtime_error("importing " + tag + ": " + t.status().message());
  return write_and_load(*t, tag);
}

}  // namespace kvant::test
