// kvant-tokenizer-bench: encoding throughput of a .kvant file's tokenizer on a text
// file, one thread. bench/tokenizer_bench.py measures the tokenizers library the same
// way; both print an id checksum, so the two runs can be seen to produce the same ids.
//
//   kvant-tokenizer-bench model.kvant text.txt [--mode whole|lines] [--repeat 5]
#include <CLI/CLI.hpp>
#include <chrono>
#include <fstream>
#include <iterator>

#include "format/reader.h"
#include "runtime/tokenizer.h"

namespace {

// FNV-1a over the ids (as little-endian u32), the same in the Python script.
uint64_t checksum(const std::vector<int32_t>& ids, uint64_t h) {
  for (int32_t id : ids) {
    auto v = static_cast<uint32_t>(id);
    for (int i = 0; i < 4; ++i) {
      h ^= v & 0xff;
      h *= 0x100000001b3ull;
      v >>= 8;
    }
  }
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Measures a .kvant tokenizer's encoding speed on a text file (one thread)"};
  std::string model, text_path, mode = "whole";
  int repeat = 5;
  app.add_option("model", model, "the .kvant file")->required()->check(CLI::ExistingFile);
  app.add_option("text", text_path, "UTF-8 text to encode")->required()->check(CLI::ExistingFile);
  app.add_option("--mode", mode, "whole: the file as one string; lines: each line (with its newline) separately")
      ->check(CLI::IsMember({"whole", "lines"}));
  app.add_option("--repeat", repeat, "timed runs after the first (cold) one; the best is reported")->check(CLI::Range(1, 1000));
  CLI11_PARSE(app, argc, argv);

  std::ifstream in(text_path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string_view> inputs;
  if (mode == "whole") {
    inputs.push_back(text);
  } else {
    for (size_t start = 0; start < text.size();) {
      const size_t nl = text.find('\n', start);
      const size_t end = nl == std::string::npos ? text.size() : nl + 1;
      inputs.push_back(std::string_view(text).substr(start, end - start));
      start = end;
    }
  }

  const auto t_load = std::chrono::steady_clock::now();
  auto file = kvant::KvantFile::open(model);
  if (!file) return fmt::print(stderr, "{}\n", file.status().message()), 1;
  auto tok = kvant::Tokenizer::from_metadata((*file)->metadata());
  if (!tok) return fmt::print(stderr, "{}\n", tok.status().message()), 1;
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

  double cold = 0, best = 1e30;
  size_t n_ids = 0;
  uint64_t sum = 0;
  for (int run = 0; run <= repeat; ++run) {
    const auto t0 = std::chrono::steady_clock::now();
    size_t count = 0;
    uint64_t h = 0xcbf29ce484222325ull;
    for (std::string_view s : inputs) {
      auto ids = (*tok)->encode(s);
      if (!ids) return fmt::print(stderr, "{}\n", ids.status().message()), 1;
      count += ids->size();
      h = checksum(*ids, h);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (run == 0) cold = s;
    else best = std::min(best, s);
    n_ids = count;
    sum = h;
  }
  const double mb = static_cast<double>(text.size()) / 1e6;
  fmt::print("kvant       mode={:<5} bytes={} inputs={} tokens={} checksum={:016x} load={:.3f}s "
             "cold={:.3f}s ({:.2f} MB/s) best={:.3f}s ({:.2f} MB/s, {:.2f} M tokens/s)\n",
             mode, text.size(), inputs.size(), n_ids, sum, load_s, cold, mb / cold, best, mb / best,
             static_cast<double>(n_ids) / best / 1e6);
  return 0;
}
