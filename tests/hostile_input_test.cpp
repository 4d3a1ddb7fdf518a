// Hostile inputs: each is refused with a message naming the file, tensor, key or option
// at fault; the tools exit non-zero; nothing crashes; no partial output file is left.
// Cases other suites already hold are not repeated here: malformed .kvant headers
// (malformed_test.cpp); config.json, checkpoint and tokenizer.json problems in the
// converter, NaN/Inf weights included (convert_test.cpp, whose tables hold the value
// cases); invalid UTF-8 in the tokenizer itself (tokenizer_test.cpp); a full context in
// the engine (engine_test.cpp); the session-file parser (fuzz_session).
//
// The model is the llama fixture converted here, so nothing needs the default model
// except the one case that needs a KV cache larger than memory.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "convert/converter.h"
#include "convert/safetensors.h"
#include "format/reader.h"
#include "include/kvant.h"
#include "runtime/context.h"
#include "tests/raw_kvant.h"
#include "tests/test_util.h"

namespace kvant {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string bin(const std::string& tool) { return test::bin_dir() + "/" + tool; }
std::string quoted(const std::string& s) { return "'" + s + "'"; }
bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A fresh directory under the process's temporary directory.
std::string fresh_dir(const std::string& name) {
  const std::string dir = test::temp_dir() + "/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// The llama fixture as a .kvant file (f16), converted once per process.
const std::string& llama_model() {
  static const std::string path = [] {
    convert::ConvertOptions o;
    o.output_path = test::temp_dir() + "/llama-f16.kvant";
    o.progress = false;
    auto r = convert::convert_checkpoint(test::fixture_dir("llama"), o);
    if (!r) throw std::runtime_error(r.status().message());
    return o.output_path;
  }();
  return path;
}

// Nothing at `dir`/`name`, and no temporary file of it either.
void expect_no_output(const std::string& dir, const std::string& name) {
  EXPECT_FALSE(fs::exists(dir + "/" + name)) << name << " was written";
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().rfind(name + ".tmp", 0), std::string::npos)
        << "temporary file left behind: " << e.path();
}

// The tool ran, failed with a non-zero exit (not a crash), and said `phrase`.
void expect_tool_error(const test::CommandResult& r, const std::string& phrase) {
  EXPECT_GT(r.exit_code, 0) << r.output;
  EXPECT_LT(r.exit_code, 128) << "killed by a signal: " << r.output;
  EXPECT_TRUE(contains(r.output, phrase)) << "expected '" << phrase << "' in: " << r.output;
}

// ---- safetensors headers ------------------------------------------------------------

// A safetensors file: an 8-byte header length (the true one unless `claimed_length`),
// the header text, then `data_bytes` bytes of data.
std::string write_safetensors(const std::string& path, const std::string& header, uint64_t data_bytes,
                              std::optional<uint64_t> claimed_length = std::nullopt) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t n = claimed_length.value_or(header.size());
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << std::string(data_bytes, '\x11');
  return path;
}

TEST(HostileSafetensors, EachHeaderProblemHasItsOwnMessage) {
  struct Case {
    const char* name;
    std::string header;
    uint64_t data_bytes;
    std::optional<uint64_t> claimed_length;
    const char* phrase;
  };
  const std::string f32x4 = R"("dtype":"F32","shape":[4])";
  const std::vector<Case> cases = {
      {"length past the end", "{}", 0, 5000, "safetensors header (5000 bytes) extends past the end of the file"},
      {"oversized length", "{}", 0, 1ull << 40, "exceeds the 100 MB limit"},
      {"not JSON", R"({"a":)", 0, {}, "safetensors header is not valid JSON"},
      {"not an object", "[1, 2]", 0, {}, "safetensors header is not a JSON object"},
      {"entry not an object", R"({"t": 3})", 0, {}, "tensor 't' is not a JSON object"},
      {"no dtype", R"({"t":{"shape":[4],"data_offsets":[0,16]}})", 16, {}, "tensor 't' has no string 'dtype'"},
      {"overlapping", R"({"a":{)" + f32x4 + R"(,"data_offsets":[0,16]},"b":{)" + f32x4 + R"(,"data_offsets":[8,24]}})",
       24, {}, "tensors 'a' and 'b' overlap"},
      {"overlap behind an empty tensor",
       R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]},"e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},)"
       R"("b":{)" + f32x4 + R"(,"data_offsets":[16,32]}})",
       32, {}, "tensors 'a' and 'b' overlap"},
      {"out of range", R"({"t":{)" + f32x4 + R"(,"data_offsets":[0,16]}})", 8, {},
       "tensor 't' data [0, 16) extends past the end of the file's data (8 bytes)"},
      {"reversed", R"({"t":{)" + f32x4 + R"(,"data_offsets":[16,0]}})", 16, {}, "in the wrong order"},
      {"negative offset", R"({"t":{)" + f32x4 + R"(,"data_offsets":[-16,0]}})", 16, {},
       "no 'data_offsets' pair of non-negative integers"},
      {"dtype and size disagree", R"({"t":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}})", 16, {},
       "has dtype F16 and shape [4] (8 bytes) but data_offsets span 16 bytes"},
      {"unknown dtype", R"({"t":{"dtype":"F12","shape":[4],"data_offsets":[0,8]}})", 8, {}, "unknown dtype 'F12'"},
      {"integer dtype", R"({"t":{"dtype":"I32","shape":[4],"data_offsets":[0,16]}})", 16, {},
       "has dtype I32, which kvant cannot convert"},
      {"negative dimension", R"({"t":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", 16, {},
       "shape entry that is not a non-negative integer"},
      {"element count overflow",
       R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})", 16, {},
       "element count overflows"},
      {"byte count overflow", R"({"t":{"dtype":"F64","shape":[2305843009213693953],"data_offsets":[0,16]}})", 16, {},
       "byte count overflows"},
  };
  const std::string dir = fresh_dir("safetensors-headers");
  std::set<std::string> messages;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::string path = write_safetensors(dir + "/case" + std::to_string(i) + ".safetensors", c.header,
                                               c.data_bytes, c.claimed_length);
    auto r = convert::Checkpoint::open_file(path);
    ASSERT_FALSE(r) << c.name << ": accepted";
    const std::string msg = r.status().message();
    EXPECT_TRUE(contains(msg, c.phrase)) << c.name << ": " << msg;
    EXPECT_TRUE(contains(msg, path)) << c.name << ": the message does not name the file: " << msg;
    messages.insert(msg);
  }
  EXPECT_EQ(messages.size(), cases.size()) << "every problem has its own message";

  std::ofstream(dir + "/short.safetensors") << "abc";
  auto r = convert::Checkpoint::open_file(dir + "/short.safetensors");
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.status().message(), "file is 3 bytes, too short for a safetensors header length"))
      << r.status().message();
}

TEST(HostileSafetensors, ShardIndexProblemsAreNamed) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"weight_map":{"a":"../elsewhere.safetensors"}})", "names '../elsewhere.safetensors', which is not a plain file name"},
      {R"({"weight_map":{"a":"/etc/passwd"}})", "not a plain file name"},
      {R"({"weight_map":{"a":7}})", "weight_map entry 'a' is not a string"},
      {R"({"weight_map":{}})", "weight_map is empty"},
      {R"({"metadata":{}})", "has no 'weight_map' object"},
      {R"({"weight_map":)", "not valid JSON"},
  };
  for (const auto& [text, phrase] : cases) {
    auto r = convert::parse_safetensors_index(text, "model.safetensors.index.json");
    ASSERT_FALSE(r) << text;
    EXPECT_TRUE(contains(r.status().message(), phrase)) << r.status().message();
    EXPECT_TRUE(contains(r.status().message(), "model.safetensors.index.json")) << r.status().message();
  }
  // The index names a tensor its shard does not hold; and a shard that is not there.
  const std::string dir = fresh_dir("sharded");
  write_safetensors(dir + "/shard-1.safetensors", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 16);
  std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map":{"a":"shard-1.safetensors","b":"shard-1.safetensors"}})";
  auto r = convert::Checkpoint::open_dir(dir);
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.status().message(), "tensor 'b' is listed in shard 'shard-1.safetensors' but that shard does not have it"))
      << r.status().message();
  std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map":{"a":"shard-2.safetensors"}})";
  r = convert::Checkpoint::open_dir(dir);
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.status().message(), "shard-2.safetensors")) << r.status().message();
  EXPECT_TRUE(contains(r.status().message(), "No such file")) << r.status().message();
}

// kvant-convert on a checkpoint whose header lies: exit 1, the file named, no output.
TEST(HostileSafetensors, ConverterExitsWithTheProblemAndWritesNothing) {
  const std::string model = fresh_dir("lying-checkpoint");
  fs::copy(test::fixture_dir("llama"), model, fs::copy_options::recursive);
  auto bytes = test::read_file(model + "/model.safetensors");
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  json header = json::parse(std::string(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(header_len)));
  header["model.norm.weight"]["data_offsets"] = header["model.embed_tokens.weight"]["data_offsets"];
  header["model.norm.weight"]["shape"] = header["model.embed_tokens.weight"]["shape"];
  const std::string text = header.dump();
  const uint64_t n = text.size();
  std::ofstream rewritten(model + "/model.safetensors", std::ios::binary | std::ios::trunc);
  rewritten.write(reinterpret_cast<const char*>(&n), 8);
  rewritten << text;
  rewritten.write(reinterpret_cast<const char*>(bytes.data()) + 8 + header_len,
                  static_cast<std::streamsize>(bytes.size() - 8 - header_len));
  rewritten.close();

  const std::string out = fresh_dir("lying-checkpoint-out");
  const auto r = test::run_command(bin("kvant-convert") + " " + quoted(model) + " -o " + quoted(out + "/m.kvant"));
  expect_tool_error(r, "overlap");
  EXPECT_TRUE(contains(r.output, "model.safetensors")) << r.output;
  expect_no_output(out, "m.kvant");
}

// ---- .kvant files that claim too much -------------------------------------------------

// A file whose token_embd claims 10^12 f32 elements: every tool says which tensor, and
// none allocates what the file claims (the reader checks the claim against the file).
TEST(HostileKvant, TensorOfATrillionElementsIsRefusedWithoutAllocating) {
  test::RawFile raw;
  raw.tensors[0].name = "token_embd";
  raw.tensors[0].dims = {1000000, 1000000};
  raw.tensors[0].size = 4000000000000ull;
  const std::string path = test::temp_dir() + "/trillion.kvant";
  test::write_file(path, raw.build());
  const std::string phrase = "tensor 'token_embd' (4000000000000 bytes at offset 0 of the data region) extends past its end";

  const int pid = test::start_process({bin("kvant-inspect"), path}, test::temp_dir() + "/trillion-inspect.log");
  const test::ProcessEnd end = test::wait_process(pid);
  EXPECT_EQ(end.exit_code, 1);
  const auto log = test::read_file(test::temp_dir() + "/trillion-inspect.log");
  EXPECT_TRUE(contains(std::string(log.begin(), log.end()), phrase));
  if (!test::under_sanitizer()) {
    EXPECT_LT(end.peak_rss_bytes, 64ull << 20) << "kvant-inspect's peak RSS";
  }
  expect_tool_error(test::run_command(bin("kvant-chat") + " -m " + quoted(path) + " -p hi"), phrase);
  expect_tool_error(test::run_command(bin("kvant-tokenize") + " " + quoted(path) + " --text hi"), phrase);
  kvant_model* m = nullptr;
  EXPECT_EQ(kvant_model_load(path.c_str(), nullptr, &m), KVANT_ERR_FORMAT);
  EXPECT_TRUE(contains(kvant_last_error(), phrase)) << kvant_last_error();
  EXPECT_EQ(m, nullptr);
}

// The converted fixture with one u32 of its metadata replaced (checksums repaired, so
// the model checks are what refuse it).
std::string patched_model(const std::string& key, uint32_t value) {
  std::vector<uint8_t> bytes = test::read_file(llama_model());
  const std::string needle = std::string(1, static_cast<char>(key.size())) + std::string(3, '\0') + key;
  const auto it = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
  if (it == bytes.end()) throw std::runtime_error("no key " + key);
  const auto at = static_cast<size_t>(it - bytes.begin()) + needle.size();
  uint32_t type;
  std::memcpy(&type, bytes.data() + at, 4);
  if (type != 2) throw std::runtime_error(key + " is not a u32");
  std::memcpy(bytes.data() + at + 4, &value, 4);
  test::repair_checksums(bytes);
  const std::string path = test::temp_dir() + "/patched-" + key + "-" + std::to_string(value) + ".kvant";
  test::write_file(path, bytes);
  return path;
}

TEST(HostileKvant, AbsurdHyperparametersAreRefusedByName) {
  const std::vector<std::tuple<std::string, uint32_t, std::string>> cases = {
      {"model.n_layers", 1000000000, "model n_layers = 1000000000 is invalid: must be in [1, 4096]"},
      {"model.n_layers", 4096, "missing tensor 'layers.2.attn_norm'"},
      {"model.n_heads", 0, "model n_heads = 0 is invalid"},
      {"model.n_kv_heads", 3, "model n_kv_heads = 3 is invalid: must divide n_heads (4)"},
      {"model.head_dim", 15, "model head_dim = 15 is invalid: must be even"},
      {"model.vocab_size", 0, "model vocab_size = 0 is invalid"},
      {"model.vocab_size", 1u << 24, "tensor 'token_embd' has shape [599, 64] but the model needs [16777216, 64]"},
      {"model.dim", 4000000000u, "model dim = 4000000000 is invalid"},
      {"model.max_seq_len", 0, "model max_seq_len = 0 is invalid"},
  };
  for (const auto& [key, value, phrase] : cases) {
    const std::string path = patched_model(key, value);
    kvant_model* m = nullptr;
    EXPECT_NE(kvant_model_load(path.c_str(), nullptr, &m), KVANT_OK) << key << " = " << value;
    EXPECT_TRUE(contains(kvant_last_error(), phrase)) << key << " = " << value << ": " << kvant_last_error();
    EXPECT_TRUE(contains(kvant_last_error(), path)) << kvant_last_error();
    EXPECT_EQ(m, nullptr);
  }
  expect_tool_error(
      test::run_command(bin("kvant-chat") + " -m " + quoted(patched_model("model.n_layers", 1000000000)) + " -p hi"),
      "n_layers = 1000000000 is invalid");
}

// ---- contexts that cannot be allocated ----------------------------------------------

struct ApiModel {
  kvant_model* model = nullptr;
  explicit ApiModel(const std::string& path) {
    EXPECT_EQ(kvant_model_load(path.c_str(), nullptr, &model), KVANT_OK) << kvant_last_error();
  }
  ~ApiModel() { kvant_model_free(model); }
};

struct ApiSession {
  kvant_session* session = nullptr;
  kvant_status status;
  ApiSession(kvant_model* m, int32_t n_ctx) {
    kvant_session_options o;
    kvant_session_options_init(&o);
    o.n_ctx = n_ctx;
    o.threads = 1;
    status = kvant_session_create(m, &o, &session);
  }
  ~ApiSession() { kvant_session_free(session); }
};

TEST(HostileContext, ContextSizesThatCannotBeAllocatedAreErrors) {
  ApiModel m(llama_model());
  ASSERT_NE(m.model, nullptr);
  {
    ApiSession s(m.model, 2000000000);
    EXPECT_EQ(s.status, KVANT_ERR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(kvant_last_error(), "context size 2000000000 is larger than 2^24 positions"))
        << kvant_last_error();
    EXPECT_EQ(s.session, nullptr);
  }
  // Within 2^24 positions per sequence, but more sequences than memory holds: refused
  // before anything is allocated.
  auto model = Model::load(llama_model());
  ASSERT_TRUE(model);
  ContextOptions o;
  o.n_ctx = 1 << 24;
  o.n_seq = 4096;
  o.threads = 1;
  auto too_big = Context::create(*model, o);
  ASSERT_FALSE(too_big);
  EXPECT_EQ(too_big.status().code(), ErrorCode::out_of_memory);
  EXPECT_TRUE(contains(too_big.status().message(), "does not fit in this machine's")) << too_big.status().message();
  o.n_seq = 1 << 20;
  auto too_many_pages = Context::create(*model, o);
  ASSERT_FALSE(too_many_pages);
  EXPECT_TRUE(contains(too_many_pages.status().message(), "positions is too large")) << too_many_pages.status().message();

  expect_tool_error(test::run_command(bin("kvant-chat") + " -m " + quoted(llama_model()) + " --ctx 2000000000 -p hi"),
                    "context size 2000000000 is larger than 2^24 positions");
}

// The default model's KV cache at 2^24 positions (386 GB in f16) is more than this
// machine's memory: an error, not an out-of-memory kill.
TEST(HostileContext, KvCacheLargerThanMemoryIsAnErrorOnTheDefaultModel) {
  const std::string dir = test::default_model_dir();
  if (dir.empty()) GTEST_SKIP() << "the default model is not fetched (tools/fetch-default-model)";
  const std::string path = test::temp_dir() + "/smollm2-q8.kvant";
  if (!fs::exists(path)) {
    const auto r = test::run_command(bin("kvant-convert") + " " + quoted(dir) + " --dtype q8 --quiet -o " + quoted(path));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  ApiModel m(path);
  ASSERT_NE(m.model, nullptr);
  const uint64_t need = kvant_model_kv_bytes_per_token(m.model, "f16") << 24;
  const auto memory = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGE_SIZE));
  if (need <= memory) GTEST_SKIP() << "this machine has more memory than a 2^24-token KV cache needs";
  ApiSession s(m.model, 1 << 24);
  EXPECT_EQ(s.status, KVANT_ERR_OUT_OF_MEMORY);
  EXPECT_TRUE(contains(kvant_last_error(), "use a smaller context or a smaller KV type")) << kvant_last_error();
  expect_tool_error(test::run_command(bin("kvant-chat") + " -m " + quoted(path) + " --ctx 16777216 -p hi"),
                    "does not fit in this machine's");
}

// ---- prompts ----------------------------------------------------------------------

TEST(HostilePrompt, LongerThanTheContextIsRefusedAndTheSessionStaysUsable) {
  ApiModel m(llama_model());
  ApiSession s(m.model, 64);
  ASSERT_EQ(s.status, KVANT_OK) << kvant_last_error();
  std::vector<int32_t> ids(65);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(3 + i);
  EXPECT_EQ(kvant_session_prefill(s.session, ids.data(), ids.size()), KVANT_ERR_CONTEXT_FULL);
  EXPECT_TRUE(contains(kvant_last_error(), "context is full: 65 tokens do not fit after 0 (context size 64)"))
      << kvant_last_error();
  kvant_generate_options g;
  kvant_generate_options_init(&g, m.model);
  g.max_tokens = 4;
  EXPECT_EQ(kvant_generate(s.session, ids.data(), ids.size(), &g, nullptr, nullptr), KVANT_ERR_CONTEXT_FULL);
  // Nothing was half evaluated: the session takes a prompt that fits.
  size_t held = 99;
  kvant_session_tokens(s.session, &held);
  EXPECT_EQ(held, 0u);
  EXPECT_EQ(kvant_session_prefill(s.session, ids.data(), 10), KVANT_OK) << kvant_last_error();
  EXPECT_NE(kvant_session_logits(s.session), nullptr);
}

TEST(HostilePrompt, InvalidUtf8IsRefusedWithItsOffset) {
  ApiModel m(llama_model());
  const std::string bad = "Hello \xc3\x28 world";
  int32_t ids[64];
  size_t n = 0;
  EXPECT_EQ(kvant_tokenize(m.model, bad.data(), bad.size(), 1, ids, 64, &n), KVANT_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(kvant_last_error(), "not valid UTF-8: byte 0xc3 at offset 6")) << kvant_last_error();

  const kvant_message messages[] = {{"system", "Be brief."}, {"user", bad.c_str()}};
  char text[4096];
  size_t len = 0;
  EXPECT_EQ(kvant_chat_template_apply(m.model, nullptr, messages, 2, 1, text, sizeof(text), &len),
            KVANT_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(kvant_last_error(), "message 1 (user) is not valid UTF-8: byte 0xc3 at offset 6"))
      << kvant_last_error();

  // The tools, with the bytes passed through the shell's printf.
  const std::string arg = "\"$(printf 'Hello \\303( world')\"";
  expect_tool_error(test::run_command(bin("kvant-chat") + " -m " + quoted(llama_model()) + " -p " + arg),
                    "not valid UTF-8");
  expect_tool_error(test::run_command(bin("kvant-tokenize") + " " + quoted(llama_model()) + " --text " + arg),
                    "not valid UTF-8: byte 0xc3 at offset 6");
}

// ---- paths that are directories, empty, missing or unreadable ------------------------

enum class BadPath { directory, empty, missing };

std::string make_bad_path(BadPath kind, const std::string& where) {
  fs::remove_all(where);
  if (kind == BadPath::directory) fs::create_directories(where);
  if (kind == BadPath::empty) std::ofstream(where).flush();
  return where;
}

const char* expected_reason(BadPath kind) {
  switch (kind) {
    case BadPath::directory: return "is a directory";
    case BadPath::empty: return "is empty";
    case BadPath::missing: return "No such file or directory";
  }
  return "";
}

TEST(HostilePath, ModelFilesThatAreDirectoriesEmptyOrMissing) {
  for (BadPath kind : {BadPath::directory, BadPath::empty, BadPath::missing}) {
    const std::string path = make_bad_path(kind, test::temp_dir() + "/bad-model.kvant");
    const std::string reason = expected_reason(kind);
    SCOPED_TRACE(reason);
    kvant_model* m = nullptr;
    EXPECT_NE(kvant_model_load(path.c_str(), nullptr, &m), KVANT_OK);
    EXPECT_TRUE(contains(kvant_last_error(), path)) << kvant_last_error();
    EXPECT_TRUE(contains(kvant_last_error(), reason)) << kvant_last_error();
    for (const std::string& command : {bin("kvant-inspect") + " " + quoted(path),
                                       bin("kvant-chat") + " -m " + quoted(path) + " -p hi"}) {
      const auto r = test::run_command(command);
      expect_tool_error(r, reason);
      EXPECT_TRUE(contains(r.output, path)) << r.output;
    }
    // kvant-tokenize checks its argument with CLI11 first.
    expect_tool_error(test::run_command(bin("kvant-tokenize") + " " + quoted(path) + " --text hi"),
                      kind == BadPath::empty ? "is empty" : kind == BadPath::directory ? "directory" : "does not exist");
  }
}

TEST(HostilePath, ConverterInputsThatAreDirectoriesEmptyOrMissing) {
  const std::string out = fresh_dir("bad-input-out");
  struct Case {
    const char* file;
    BadPath kind;
    const char* phrase;
  };
  const std::vector<Case> cases = {
      {"config.json", BadPath::directory, "config.json' is a directory, not a file"},
      {"config.json", BadPath::empty, "config.json: not valid JSON"},
      {"config.json", BadPath::missing, "has no config.json"},
      {"model.safetensors", BadPath::directory, "model.safetensors' is a directory, not a file"},
      {"model.safetensors", BadPath::empty, "file is 0 bytes, too short for a safetensors header length"},
      {"model.safetensors", BadPath::missing, "has neither model.safetensors nor model.safetensors.index.json"},
      {"tokenizer.json", BadPath::directory, "tokenizer.json' is a directory, not a file"},
      {"tokenizer.json", BadPath::empty, "tokenizer.json: not valid JSON"},
      {"tokenizer.json", BadPath::missing, "has no tokenizer.json"},
      {"tokenizer_config.json", BadPath::empty, "tokenizer_config.json: not valid JSON"},
      {"generation_config.json", BadPath::directory, "generation_config.json' is a directory, not a file"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.file) + ": " + expected_reason(c.kind));
    const std::string model = fresh_dir("bad-input");
    fs::copy(test::fixture_dir("llama"), model, fs::copy_options::recursive);
    make_bad_path(c.kind, model + "/" + c.file);
    const auto r = test::run_command(bin("kvant-convert") + " " + quoted(model) + " -o " + quoted(out + "/m.kvant"));
    expect_tool_error(r, c.phrase);
    expect_no_output(out, "m.kvant");
  }
}

TEST(HostilePath, ConverterOutputThatCannotBeWritten) {
  const std::string out = fresh_dir("bad-output");
  // -o names a directory: the conversion runs, the final rename fails, nothing is left.
  fs::create_directories(out + "/m.kvant");
  auto r = test::run_command(bin("kvant-convert") + " " + quoted(test::fixture_dir("llama")) + " --quiet -o " +
                             quoted(out + "/m.kvant"));
  expect_tool_error(r, "cannot rename temporary file to '" + out + "/m.kvant': Is a directory");
  EXPECT_TRUE(fs::is_directory(out + "/m.kvant"));
  EXPECT_TRUE(fs::is_empty(out + "/m.kvant"));
  for (const auto& e : fs::directory_iterator(out)) EXPECT_EQ(e.path().filename(), "m.kvant") << e.path();
  // -o in a directory that does not exist.
  r = test::run_command(bin("kvant-convert") + " " + quoted(test::fixture_dir("llama")) + " --quiet -o " +
                        quoted(out + "/missing/m.kvant"));
  expect_tool_error(r, "cannot create '" + out + "/missing/m.kvant.tmp.");
  EXPECT_TRUE(contains(r.output, "No such file or directory")) << r.output;
  EXPECT_FALSE(fs::exists(out + "/missing"));
}

TEST(HostilePath, SessionFilesThatAreDirectoriesEmptyMissingOrCorrupt) {
  ApiModel m(llama_model());
  ApiSession s(m.model, 64);
  ASSERT_EQ(s.status, KVANT_OK);
  for (BadPath kind : {BadPath::directory, BadPath::empty, BadPath::missing}) {
    const std::string path = make_bad_path(kind, test::temp_dir() + "/bad.session");
    EXPECT_NE(kvant_session_load(s.session, path.c_str()), KVANT_OK);
    EXPECT_TRUE(contains(kvant_last_error(), path)) << kvant_last_error();
    EXPECT_TRUE(contains(kvant_last_error(), expected_reason(kind))) << kvant_last_error();
  }
  // A good file, then damaged ways: each refused, and the session keeps what it held.
  const int32_t ids[] = {1, 20, 30, 40, 50};
  ASSERT_EQ(kvant_session_prefill(s.session, ids, 5), KVANT_OK);
  const std::string good = test::temp_dir() + "/good.session";
  ASSERT_EQ(kvant_session_save(s.session, good.c_str()), KVANT_OK) << kvant_last_error();
  const auto bytes = test::read_file(good);
  std::vector<std::pair<std::vector<uint8_t>, std::string>> damaged;
  damaged.push_back({std::vector<uint8_t>(bytes.begin(), bytes.end() - 100), "checksum mismatch"});
  damaged.push_back({std::vector<uint8_t>(bytes.begin(), bytes.begin() + 20), "is too short"});
  auto flipped = bytes;
  flipped[bytes.size() / 2] ^= 1;
  damaged.push_back({flipped, "checksum mismatch"});
  auto magic = bytes;
  magic[0] = 'X';
  damaged.push_back({magic, "not a kvant session file"});
  const std::string bad = test::temp_dir() + "/damaged.session";
  for (const auto& [file, phrase] : damaged) {
    test::write_file(bad, file);
    EXPECT_NE(kvant_session_load(s.session, bad.c_str()), KVANT_OK);
    EXPECT_TRUE(contains(kvant_last_error(), phrase)) << kvant_last_error();
    size_t held = 0;
    kvant_session_tokens(s.session, &held);
    EXPECT_EQ(held, 5u) << "a refused file must not change the session";
  }
  // Saving over a directory or into a missing one fails and leaves the good file as it was.
  fs::create_directories(test::temp_dir() + "/session-dir");
  EXPECT_EQ(kvant_session_save(s.session, (test::temp_dir() + "/session-dir").c_str()), KVANT_ERR_IO);
  EXPECT_TRUE(contains(kvant_last_error(), "Is a directory")) << kvant_last_error();
  EXPECT_EQ(kvant_session_save(s.session, (test::temp_dir() + "/no-such-dir/x.session").c_str()), KVANT_ERR_IO);
  EXPECT_TRUE(contains(kvant_last_error(), "No such file or directory")) << kvant_last_error();
  for (const auto& e : fs::directory_iterator(test::temp_dir()))
    EXPECT_FALSE(contains(e.path().filename().string(), ".session.tmp")) << e.path();
  EXPECT_EQ(test::read_file(good), bytes);
}

// A session holding no tokens saves and loads (its token list is empty: regression for
// a memcpy from a null pointer, found by fuzz_session).
TEST(HostilePath, EmptySessionSavesAndLoads) {
  ApiModel m(llama_model());
  ApiSession s(m.model, 64);
  const std::string path = test::temp_dir() + "/empty.session";
  ASSERT_EQ(kvant_session_save(s.session, path.c_str()), KVANT_OK) << kvant_last_error();
  ASSERT_EQ(kvant_session_load(s.session, path.c_str()), KVANT_OK) << kvant_last_error();
  size_t held = 99;
  kvant_session_tokens(s.session, &held);
  EXPECT_EQ(held, 0u);
}

// chmod 000 denies reads to everyone but root. As root (CI containers) the case cannot
// be made, and the test says so instead of passing vacuously.
TEST(HostilePath, UnreadableFilesAreNamed) {
  const std::string path = test::temp_dir() + "/unreadable.kvant";
  fs::copy_file(llama_model(), path, fs::copy_options::overwrite_existing);
  ASSERT_EQ(chmod(path.c_str(), 0), 0);
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    std::fclose(f);
    GTEST_SKIP() << "running as root (uid " << geteuid()
                 << "): chmod 000 does not deny reads, so an unreadable file cannot be made";
  }
  kvant_model* m = nullptr;
  EXPECT_EQ(kvant_model_load(path.c_str(), nullptr, &m), KVANT_ERR_IO);
  EXPECT_TRUE(contains(kvant_last_error(), "Permission denied")) << kvant_last_error();
  expect_tool_error(test::run_command(bin("kvant-inspect") + " " + quoted(path)), "Permission denied");
  expect_tool_error(test::run_command(bin("kvant-chat") + " -m " + quoted(path) + " -p hi"), "Permission denied");
  const std::string model = fresh_dir("unreadable-config");
  fs::copy(test::fixture_dir("llama"), model, fs::copy_options::recursive);
  ASSERT_EQ(chmod((model + "/config.json").c_str(), 0), 0);
  const std::string out = fresh_dir("unreadable-out");
  expect_tool_error(test::run_command(bin("kvant-convert") + " " + quoted(model) + " -o " + quoted(out + "/m.kvant")),
                    "Permission denied");
  expect_no_output(out, "m.kvant");
}

}  // namespace
}  // namespace kvant
