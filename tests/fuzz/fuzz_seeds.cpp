// Writes the generated seed files of the fuzz corpora (tests/fuzz/corpus/<target>/seed-*):
// .kvant files converted from the fixtures, saved sessions, safetensors inputs, and the
// fixtures' JSON files with the selector byte their target expects. Run from the fuzz
// build when a format changes:  build-asan/bin/fuzz_seeds tests/fuzz/corpus
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "convert/converter.h"
#include "runtime/session.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using namespace kvant;
namespace fs = std::filesystem;

std::string g_corpus;

void write_seed(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::create_directories(g_corpus + "/" + target);
  const std::string path = g_corpus + "/" + target + "/seed-" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  std::printf("%8zu  %s\n", bytes.size(), path.c_str());
}

std::string with_selector(uint8_t selector, const std::string& text) { return std::string(1, static_cast<char>(selector)) + text; }

void fail(const Status& s) {
  std::fprintf(stderr, "fuzz_seeds: %s\n", s.message().c_str());
  std::exit(1);
}

// A fixture converted to `dtype`: the reader's seed, and the model the session seeds use.
std::string convert_fixture(const std::string& name, DType dtype, const std::string& dir) {
  convert::ConvertOptions o;
  o.output_path = dir + "/" + name + ".kvant";
  o.dtype = dtype;
  o.progress = false;
  o.threads = 1;
  if (auto r = convert::convert_checkpoint(fuzz::fixture_path(name), o); !r) fail(r.status());
  return fuzz::read_file(o.output_path);
}

void session_seed(const std::string& model_path, KvType kv, int n_tokens, const std::string& name) {
  auto model = Model::load(model_path);
  if (!model) fail(model.status());
  ContextOptions o;
  o.n_ctx = 128;
  o.threads = 1;
  o.kv_type = kv;
  auto session = Session::create(*model, o);
  if (!session) fail(session.status());
  std::vector<int32_t> tokens;
  for (int i = 0; i < n_tokens; ++i) tokens.push_back((i * 37 + 1) % 599);
  if (auto s = (*session)->append(tokens); !s) fail(s);
  const std::string path = model_path + ".session";
  if (auto s = (*session)->save(path, R"({"kvant_chat":1,"messages":[{"role":"user","content":"hi"}]})"); !s) fail(s);
  write_seed("fuzz_session", name, fuzz::read_file(path));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds CORPUS_DIR (tests/fuzz/corpus)\n");
    return 2;
  }
  g_corpus = argv[1];
  const std::string work = (fs::temp_directory_path() / "kvant-fuzz-seeds").string();
  fs::create_directories(work);

  // .kvant reader: two architectures, quantized and not, and a tokenizer-only file.
  write_seed("fuzz_kvant_reader", "llama-q4", convert_fixture("llama", DType::q4, work));
  write_seed("fuzz_kvant_reader", "gpt2-q8", convert_fixture("gpt2", DType::q8, work));
  const auto tok = fuzz::tokenizer_image(fuzz::read_file(fuzz::fixture_path("tokenizers/tok-bytelevel-qwen2/tokenizer.json")));
  write_seed("fuzz_kvant_reader", "tokenizer-only", std::string(tok.begin(), tok.end()));

  // Sessions of the llama fixture (2 layers, 2 KV heads, head_dim 16) in three KV types.
  session_seed(work + "/llama.kvant", KvType::f16, 5, "f16-5-tokens");
  session_seed(work + "/llama.kvant", KvType::q8, 40, "q8-40-tokens");
  session_seed(work + "/llama.kvant", KvType::q4, 33, "q4-33-tokens");

  // safetensors: a header (selector 0, then the data size), an index (1), a whole file (2).
  const std::string st = fuzz::read_file(fuzz::fixture_path("llama/model.safetensors"));
  uint64_t header_len;
  std::memcpy(&header_len, st.data(), 8);
  const auto data_size = static_cast<uint32_t>(st.size() - 8 - header_len);
  write_seed("fuzz_safetensors", "header",
             with_selector(0, std::string(reinterpret_cast<const char*>(&data_size), 4) + st.substr(8, header_len)));
  write_seed("fuzz_safetensors", "index",
             with_selector(1, R"({"metadata":{"total_size":96},"weight_map":{"a.weight":"model-00001-of-00002.safetensors",)"
                              R"("b.weight":"model-00002-of-00002.safetensors"}})"));
  {
    nlohmann::json h = {{"__metadata__", {{"format", "pt"}}},
                        {"f32", {{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {0, 24}}}},
                        {"f16", {{"dtype", "F16"}, {"shape", {4}}, {"data_offsets", {24, 32}}}},
                        {"bf16", {{"dtype", "BF16"}, {"shape", {2, 2}}, {"data_offsets", {32, 40}}}},
                        {"f64", {{"dtype", "F64"}, {"shape", {1}}, {"data_offsets", {40, 48}}}},
                        {"empty", {{"dtype", "F32"}, {"shape", {0, 4}}, {"data_offsets", {48, 48}}}}};
    const std::string text = h.dump();
    const uint64_t n = text.size();
    std::string file(reinterpret_cast<const char*>(&n), 8);
    file += text;
    for (int i = 0; i < 48; ++i) file += static_cast<char>(i * 7);
    write_seed("fuzz_safetensors", "file", with_selector(2, file));
  }

  // config.json of every fixture architecture.
  for (const char* arch : {"llama", "llama3", "mistral", "qwen2", "gpt2"})
    write_seed("fuzz_hf_config", arch, fuzz::read_file(fuzz::fixture_path(std::string(arch) + "/config.json")));
  // GPT-2 with its own head (an untied head once had no checkpoint source).
  {
    auto j = nlohmann::json::parse(fuzz::read_file(fuzz::fixture_path("gpt2/config.json")));
    j["tie_word_embeddings"] = false;
    write_seed("fuzz_hf_config", "gpt2-untied", j.dump(2));
  }

  // The side files of the tokenizer, with their selector byte.
  write_seed("fuzz_tokenizer_config", "tokenizer-config",
             with_selector(0, fuzz::read_file(fuzz::fixture_path("llama/tokenizer_config.json"))));
  write_seed("fuzz_tokenizer_config", "special-tokens-map",
             with_selector(1, R"({"bos_token":"<s>","eos_token":{"content":"</s>","lstrip":false},"unk_token":"<unk>"})"));
  write_seed("fuzz_tokenizer_config", "generation-config",
             with_selector(2, fuzz::read_file(fuzz::fixture_path("llama/generation_config.json"))));
  write_seed("fuzz_tokenizer_config", "chat-template-json",
             with_selector(3, R"({"chat_template":"{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>{% endfor %}"})"));
  write_seed("fuzz_tokenizer_config", "chat-template-jinja",
             with_selector(4, "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} "
                              "[/INST]{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"));
  write_seed("fuzz_tokenizer_config", "config", with_selector(5, R"({"bos_token_id":1,"eos_token_id":[2,3]})"));
  fs::remove_all(work);
  return 0;
}
