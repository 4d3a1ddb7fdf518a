// The tokenizer against the Hugging Face `tokenizers` library: ids of >1,000 strings
// for the four fixture tokenizers and SmolLM2's (goldens by tools/make-tokenizer-goldens),
// decoding, round trips, streaming, pipeline variants, and errors.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <thread>
#include <tuple>

#include "convert/hf_tokenizer.h"
#include "format/utf8.h"
#include "format/writer.h"
#include "runtime/chat_template.h"
#include "tests/test_util.h"
#include "tests/tokenizer_test_util.h"

namespace kvant {
namespace {

using nlohmann::ordered_json;

std::vector<std::string> corpus() {
  const ordered_json golden = test::load_golden("corpus.json");
  std::vector<std::string> out;
  for (const auto& s : golden["strings"]) out.push_back(s.get<std::string>());
  return out;
}

std::vector<int32_t> ids_of(const ordered_json& j) { return j.get<std::vector<int32_t>>(); }

// The tokenizer directory behind each golden; SmolLM2's is the downloaded default model.
std::string tokenizer_dir(const std::string& name) {
  if (name == "smollm2") return test::default_model_dir();
  const std::map<std::string, std::string> dirs = {{"gpt2", "tok-bytelevel-gpt2"},
                                                   {"llama3", "tok-bytelevel-llama3"},
                                                   {"qwen2", "tok-bytelevel-qwen2"},
                                                   {"sentencepiece", "tok-sentencepiece"}};
  return test::fixture_dir("tokenizers/" + dirs.at(name));
}

class Parity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = tokenizer_dir(GetParam());
    if (dir_.empty()) GTEST_SKIP() << "default model not fetched (run tools/fetch-default-model); SmolLM2 untested";
    file_ = test::load_tokenizer_dir(dir_);
    golden_ = test::load_golden(GetParam() + ".json.gz");
    corpus_ = corpus();
  }
  const Tokenizer& tok() const { return *file_.tokenizer; }
  std::string dir_;
  test::TokenizerFile file_;
  ordered_json golden_;
  std::vector<std::string> corpus_;
};

TEST_P(Parity, IdsEqualTheTokenizersLibrary) {
  ASSERT_GE(corpus_.size(), 1000u);
  const auto& expected = golden_["ids"];
  ASSERT_EQ(expected.size(), corpus_.size());
  const std::vector<int32_t> prefix = ids_of(golden_["prefix"]), suffix = ids_of(golden_["suffix"]);
  size_t mismatches = 0, total_ids = 0;
  for (size_t i = 0; i < corpus_.size(); ++i) {
    const std::vector<int32_t> want = ids_of(expected[i]);
    total_ids += want.size();
    auto got = tok().encode(corpus_[i], /*add_special_tokens=*/true);
    ASSERT_TRUE(got) << got.status().message();
    auto plain = tok().encode(corpus_[i], /*add_special_tokens=*/false);
    ASSERT_TRUE(plain) << plain.status().message();
    const std::vector<int32_t> want_plain(want.begin() + static_cast<ptrdiff_t>(prefix.size()),
                                          want.end() - static_cast<ptrdiff_t>(suffix.size()));
    if (*got != want || *plain != want_plain) {
      if (++mismatches <= 5)
        ADD_FAILURE() << GetParam() << " string " << i << " " << test::quoted(corpus_[i]) << "\n  expected "
                      << ordered_json(want).dump() << "\n  got      " << ordered_json(*got).dump();
    }
  }
  EXPECT_EQ(mismatches, 0u) << "of " << corpus_.size() << " strings";
  EXPECT_GT(total_ids, corpus_.size());  // the goldens are not empty
}

TEST_P(Parity, DecodeOfEncodeGivesBackTheText) {
  // Where `tokenizers` itself does not give the input back (NFC normalization, unknown
  // characters), the golden holds its decoded text: kvant must equal that instead.
  const auto& decoded = golden_["decoded"];
  size_t lossless = 0;
  for (size_t i = 0; i < corpus_.size(); ++i) {
    auto ids = tok().encode(corpus_[i], false);
    ASSERT_TRUE(ids);
    const std::string key = std::to_string(i);
    const std::string want = decoded.contains(key) ? decoded[key].get<std::string>() : corpus_[i];
    lossless += !decoded.contains(key);
    EXPECT_EQ(tok().decode(*ids), want) << "string " << i << " " << test::quoted(corpus_[i]);
  }
  // Byte-level BPE without a normalizer loses nothing at all.
  if (GetParam() == "gpt2" || GetParam() == "llama3" || GetParam() == "smollm2") {
    EXPECT_EQ(lossless, corpus_.size());
  }
  EXPECT_GT(lossless, corpus_.size() * 9 / 10);
}

TEST_P(Parity, DecodeOfArbitraryIdsEqualsTheTokenizersLibrary) {
  for (const auto& c : golden_["decode_cases"]) {
    const std::vector<int32_t> ids = ids_of(c["ids"]);
    EXPECT_EQ(tok().decode(ids, false), c["text"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(tok().decode(ids, true), c["skip"].get<std::string>()) << c["ids"].dump();
  }
}

TEST_P(Parity, StreamingDecodeEmitsWholeCharactersAndTheSameText) {
  size_t chunks_total = 0;
  for (size_t i = 0; i < corpus_.size(); ++i) {
    auto ids = tok().encode(corpus_[i], true);
    ASSERT_TRUE(ids);
    for (bool skip : {false, true}) {
      StreamingDecoder stream(tok(), skip);
      std::string joined;
      for (int32_t id : *ids) {
        const std::string chunk = stream.push(id);
        ASSERT_TRUE(is_valid_utf8(chunk)) << "string " << i;
        chunks_total += !chunk.empty();
        joined += chunk;
      }
      joined += stream.flush();
      ASSERT_EQ(joined, tok().decode(*ids, skip)) << "string " << i << " " << test::quoted(corpus_[i]);
    }
  }
  EXPECT_GT(chunks_total, corpus_.size());
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Parity, ::testing::Values("gpt2", "llama3", "qwen2", "sentencepiece", "smollm2"));

// Pipelines the fixtures lack (Metaspace, other normalizers, Split behaviors, added
// token flags, unk handling, ...), as patches of a fixture's tokenizer.json.
TEST(TokenizerVariants, IdsAndDecodingEqualTheTokenizersLibrary) {
  const ordered_json golden = test::load_golden("variants.json.gz");
  const std::vector<std::string> all = corpus();
  std::vector<std::string> subset;
  for (const auto& i : golden["subset"]) subset.push_back(all.at(i.get<size_t>()));
  ASSERT_GE(subset.size(), 100u);
  ASSERT_GE(golden["variants"].size(), 20u);
  for (const auto& v : golden["variants"]) {
    const std::string name = v["name"].get<std::string>();
    SCOPED_TRACE(name);
    ordered_json j = ordered_json::parse(
        test::read_text(test::fixture_dir("tokenizers/" + v["base"].get<std::string>()) + "/tokenizer.json"));
    if (v.contains("patch"))
      for (const auto& [k, val] : v["patch"].items()) j[k] = val;
    if (v.contains("model"))
      for (const auto& [k, val] : v["model"].items()) j["model"][k] = val;
    if (v.contains("append_added"))
      for (const auto& a : v["append_added"]) j["added_tokens"].push_back(a);
    const test::TokenizerFile f = test::load_tokenizer_json(j.dump(), name);
    const auto& g = v["golden"];
    const std::vector<int32_t> prefix = ids_of(g["prefix"]), suffix = ids_of(g["suffix"]);
    size_t mismatches = 0;
    for (size_t i = 0; i < subset.size(); ++i) {
      const std::vector<int32_t> want = ids_of(g["ids"][i]);
      auto got = f.tokenizer->encode(subset[i], true);
      ASSERT_TRUE(got) << got.status().message();
      auto plain = f.tokenizer->encode(subset[i], false);
      ASSERT_TRUE(plain);
      const std::vector<int32_t> want_plain(want.begin() + static_cast<ptrdiff_t>(prefix.size()),
                                            want.end() - static_cast<ptrdiff_t>(suffix.size()));
      if ((*got != want || *plain != want_plain) && ++mismatches <= 3)
        ADD_FAILURE() << name << ": " << test::quoted(subset[i]) << "\n  expected " << ordered_json(want).dump()
                      << "\n  got      " << ordered_json(*got).dump();
    }
    EXPECT_EQ(mismatches, 0u);
    for (const auto& c : g["decode_cases"]) {
      const std::vector<int32_t> ids = ids_of(c["ids"]);
      EXPECT_EQ(f.tokenizer->decode(ids, false), c["text"].get<std::string>()) << c["ids"].dump();
      EXPECT_EQ(f.tokenizer->decode(ids, true), c["skip"].get<std::string>()) << c["ids"].dump();
    }
  }
}

test::TokenizerFile llama3() { return test::load_tokenizer_dir(test::fixture_dir("llama3")); }

TEST(TokenizerApi, AccessorsReadTheFile) {
  const auto f = llama3();
  const Tokenizer& t = *f.tokenizer;
  EXPECT_EQ(t.vocab_size(), 461);
  EXPECT_EQ(t.bos_id(), 456);
  EXPECT_EQ(t.token_text(456), "<|begin_of_text|>");
  EXPECT_EQ(t.eos_id(), 458);  // tokenizer_config.json: <|eot_id|>
  EXPECT_EQ(t.eos_ids(), (std::vector<int32_t>{457, 458}));  // generation_config.json
  EXPECT_TRUE(t.is_eos(457));
  EXPECT_FALSE(t.is_eos(456));
  EXPECT_TRUE(t.is_special(456));
  EXPECT_FALSE(t.is_special(100));
  EXPECT_FALSE(t.is_special(-1));
  EXPECT_FALSE(t.is_special(1 << 30));
  EXPECT_EQ(t.token_id("<|eot_id|>"), 458);
  EXPECT_EQ(t.token_id(std::string(t.token_text(300))), 300);
  EXPECT_EQ(t.token_id("no such token"), -1);
  EXPECT_EQ(t.token_text(-5), "");
  EXPECT_EQ(t.token_text(100000), "");
}

TEST(TokenizerApi, InvalidUtf8IsAnErrorThatNamesTheOffset) {
  const auto f = llama3();
  for (const auto& [text, offset] : std::vector<std::pair<std::string, size_t>>{
           {"abc\xff", 3}, {"\xc3", 0}, {"ok \xe2\x82", 3}, {"\xed\xa0\x80", 0}, {"x\xc0\x80", 1}, {"\xf4\x90\x80\x80", 0}}) {
    auto r = f.tokenizer->encode(text);
    ASSERT_FALSE(r) << test::quoted(text);
    EXPECT_EQ(r.status().code(), ErrorCode::invalid_argument);
    EXPECT_NE(r.status().message().find("offset " + std::to_string(offset)), std::string::npos) << r.status().message();
  }
}

TEST(TokenizerApi, DecodeSkipsIdsItDoesNotKnow) {
  const auto f = llama3();
  const Tokenizer& t = *f.tokenizer;
  auto ids = t.encode("Hello world", false);
  ASSERT_TRUE(ids);
  std::vector<int32_t> noisy = {-1, INT32_MIN, 461, INT32_MAX};
  noisy.insert(noisy.end(), ids->begin(), ids->end());
  noisy.push_back(1 << 24);
  EXPECT_EQ(t.decode(noisy), "Hello world");
  EXPECT_EQ(t.decode(std::vector<int32_t>{}), "");
  StreamingDecoder stream(t);
  std::string out;
  for (int32_t id : noisy) out += stream.push(id);
  out += stream.flush();
  EXPECT_EQ(out, "Hello world");
}

TEST(TokenizerApi, SpecialTokensAreKeptOrDropped) {
  const auto f = llama3();
  const Tokenizer& t = *f.tokenizer;
  auto ids = t.encode("<|start_header_id|>user<|end_header_id|>hi<|eot_id|>", true);
  ASSERT_TRUE(ids);
  ASSERT_GE(ids->size(), 5u);
  EXPECT_EQ((*ids)[0], 456);  // BOS from the post-processor
  EXPECT_EQ((*ids)[1], t.token_id("<|start_header_id|>"));
  EXPECT_EQ(ids->back(), 458);
  EXPECT_EQ(t.decode(*ids), "<|begin_of_text|><|start_header_id|>user<|end_header_id|>hi<|eot_id|>");
  EXPECT_EQ(t.decode(*ids, /*skip_special_tokens=*/true), "userhi");
}

TEST(TokenizerApi, StreamingHoldsBackIncompleteCharacters) {
  // tok-sentencepiece has no token for these characters: each is split into <0xXX>
  // byte tokens, so a character arrives over several ids.
  const auto f = test::load_tokenizer_dir(test::fixture_dir("llama"));
  const Tokenizer& t = *f.tokenizer;
  auto ids = t.encode("日😀", false);
  ASSERT_TRUE(ids);
  ASSERT_GE(ids->size(), 7u);  // ▁, 3 bytes, 4 bytes
  StreamingDecoder stream(t);
  std::vector<std::string> chunks;
  for (int32_t id : *ids) chunks.push_back(stream.push(id));
  chunks.push_back(stream.flush());
  std::string joined;
  for (const auto& c : chunks) {
    EXPECT_TRUE(is_valid_utf8(c));
    EXPECT_EQ(c.find("\xef\xbf\xbd"), std::string::npos) << "a replacement character leaked: " << test::quoted(c);
    joined += c;
  }
  EXPECT_EQ(joined, "日😀");
  // An incomplete character at the end comes out as U+FFFD only on flush.
  StreamingDecoder cut(t);
  std::string partial;
  for (size_t i = 0; i + 1 < ids->size(); ++i) partial += cut.push((*ids)[i]);
  EXPECT_EQ(partial, "日");
  EXPECT_EQ(cut.flush(), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  // ByteFallback: one per byte
}

TEST(TokenizerApi, EncodeIsSafeFromManyThreads) {
  const auto f = test::load_tokenizer_dir(test::fixture_dir("qwen2"));
  const std::vector<std::string> texts = corpus();
  std::vector<std::vector<int32_t>> reference;
  for (const auto& s : texts) reference.push_back(*f.tokenizer->encode(s));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int w = 0; w < 4; ++w)
    threads.emplace_back([&, w] {
      for (size_t i = static_cast<size_t>(w); i < texts.size(); i += 2)
        if (*f.tokenizer->encode(texts[i]) != reference[i]) ++failures;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

// Unknown or malformed pipeline components: an error naming them, at load time.
TEST(TokenizerErrors, UnsupportedComponentsAreNamed) {
  const std::string base = test::read_text(test::fixture_dir("tokenizers/tok-bytelevel-gpt2") + "/tokenizer.json");
  const std::vector<std::tuple<std::string, ordered_json, std::string>> cases = {
      {"normalizer", {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}}, "normalizer type 'Precompiled'"},
      {"pre_tokenizer", {{"type", "UnicodeScripts"}}, "pre-tokenizer type 'UnicodeScripts'"},
      {"post_processor", {{"type", "Fancy"}}, "post-processor type 'Fancy'"},
      {"decoder", {{"type", "CTC"}}, "decoder type 'CTC'"},
      {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Nope"}}}}}, "pre-tokenizer type 'Nope'"},
      {"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}},
       "does not compile"},
      {"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}},
       "behavior 'Sideways'"},
      {"normalizer", {{"type", "Replace"}, {"content", "x"}}, "'pattern'"},
      {"decoder", {{"type", "Strip"}, {"content", "ab"}, {"start", 1}}, "one character"},
      {"post_processor", {{"type", "TemplateProcessing"}, {"single", {{{"SpecialToken", {{"id", "<x>"}}}}}}},
       "special token '<x>'"},
      {"normalizer", 42, "not an object with a string 'type'"},
      {"post_processor", {{"type", {{"nested", 1}}}}, "not an object with a string 'type'"},  // once crashed the importer
  };
  for (const auto& [key, value, expected] : cases) {
    ordered_json j = ordered_json::parse(base);
    j[key] = value;
    auto imported = convert::parse_tokenizer_json(j.dump(), "t");
    ASSERT_TRUE(imported);
    const std::string path = test::temp_dir() + "/bad-component.kvant";
    {
      KvantWriter w(path);
      w.set("general.name", "bad");
      imported->to_metadata(w);
      ASSERT_TRUE(w.begin());
      ASSERT_TRUE(w.commit());
    }
    auto file = KvantFile::open(path);
    ASSERT_TRUE(file);
    auto tok = Tokenizer::from_metadata((*file)->metadata());
    ASSERT_FALSE(tok) << key << " " << value.dump();
    EXPECT_NE(tok.status().message().find(expected), std::string::npos)
        << "message: " << tok.status().message() << "\nexpected to contain: " << expected;
  }
}

TEST(TokenizerErrors, FilesWithoutATokenizerSayWhy) {
  const std::string path = test::temp_dir() + "/synthetic.kvant";
  auto r = test::run_command(test::bin_dir() + "/kvant-convert --synthetic tiny -o " + path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto file = KvantFile::open(path);
  ASSERT_TRUE(file);
  auto tok = Tokenizer::from_metadata((*file)->metadata());
  ASSERT_FALSE(tok);
  EXPECT_NE(tok.status().message().find("no tokenizer"), std::string::npos) << tok.status().message();
}

}  // namespace
}  // namespace kvant

namespace kvant {
namespace {

// kvant-tokenize on a file made by kvant-convert (the whole user path).
class TokenizeCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = test::temp_dir() + "/cli-llama3.kvant";
    const auto r = test::run_command(test::bin_dir() + "/kvant-convert " + test::fixture_dir("llama3") + " -o " + model_);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  // Runs kvant-tokenize with `input` on stdin; stdout and stderr together.
  static test::CommandResult tokenize(const std::string& args, const std::string& input) {
    const std::string in = test::temp_dir() + "/cli-input.txt";
    test::write_file(in, std::vector<uint8_t>(input.begin(), input.end()));
    return test::run_command(test::bin_dir() + "/kvant-tokenize " + model_ + " " + args + " < " + in);
  }
  static std::string model_;
};
std::string TokenizeCli::model_;

TEST_F(TokenizeCli, EncodesAndDecodes) {
  const auto f = llama3();
  const std::string text = "Hello world, naïve café!\n";
  const std::vector<int32_t> ids = *f.tokenizer->encode(text);
  auto r = tokenize("", text);  // stdin byte for byte, trailing newline included
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, fmt::format("{}\n", fmt::join(ids, " ")));
  r = tokenize("--json --no-special", text);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(ordered_json::parse(r.output), ordered_json(*f.tokenizer->encode(text, false)));
  r = tokenize("--decode", fmt::format("{}", fmt::join(ids, ", ")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "<|begin_of_text|>" + text);
  r = tokenize("--decode --skip-special --json", ordered_json(ids).dump());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(ordered_json::parse(r.output), text);
  r = tokenize("--batch", R"(["a", "", "b c"])");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(ordered_json::parse(r.output),
            ordered_json({*f.tokenizer->encode("a"), *f.tokenizer->encode(""), *f.tokenizer->encode("b c")}));
}

TEST_F(TokenizeCli, RendersChats) {
  const std::string messages = R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}])";
  auto r = tokenize("--chat --show-text", messages);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The fixture's own template (tokenizer_config.json of tests/data/fixtures/llama3).
  const std::string expected =
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
      "<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
  EXPECT_EQ(r.output, expected);
  r = tokenize("--chat --json", messages);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(ordered_json::parse(r.output), ordered_json(*llama3().tokenizer->encode(expected, false)));
  r = tokenize("--chat --show-text --no-generation-prompt --chat-template chatml", messages);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n");
  r = tokenize("--chat --chat-template gemma", messages);  // gemma refuses system messages
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("System role not supported"), std::string::npos) << r.output;
  r = tokenize("--chat --chat-template nosuch", messages);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("chatml, llama3, llama2, mistral, gemma, phi3"), std::string::npos) << r.output;
}

TEST_F(TokenizeCli, BadInputIsANamedError) {
  auto r = tokenize("--decode", "12 abc");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("'a'"), std::string::npos) << r.output;
  r = tokenize("", "bad \xff byte");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("offset 4"), std::string::npos) << r.output;
  r = tokenize("--chat", "not json");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("not valid JSON"), std::string::npos) << r.output;
  r = test::run_command(test::bin_dir() + "/kvant-tokenize " + test::temp_dir() + "/missing.kvant --text x");
  EXPECT_NE(r.exit_code, 0);
  r = test::run_command(test::bin_dir() + "/kvant-tokenize --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("--chat-template"), std::string::npos);
}

// SmolLM2, converted by kvant-convert: ids and chat rendering as transformers gives them.
TEST(DefaultModel, TokenizerAndChatTemplateThroughKvantConvert) {
  const std::string dir = test::default_model_dir();
  if (dir.empty()) GTEST_SKIP() << "default model not fetched (run tools/fetch-default-model)";
  const std::string model = test::temp_dir() + "/smollm2-q8.kvant";
  auto r = test::run_command(test::bin_dir() + "/kvant-convert " + dir + " -o " + model + " --dtype q8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto file = KvantFile::open(model);
  ASSERT_TRUE(file);
  auto tok = Tokenizer::from_metadata((*file)->metadata());
  ASSERT_TRUE(tok) << tok.status().message();
  const ordered_json golden = test::load_golden("smollm2.json.gz");
  const std::vector<std::string> strings = corpus();
  for (size_t i = 0; i < strings.size(); ++i)
    ASSERT_EQ(ordered_json(*(*tok)->encode(strings[i])), golden["ids"][i]) << test::quoted(strings[i]);
  EXPECT_EQ((*tok)->eos_ids(), (std::vector<int32_t>{2}));
  auto chat = ChatTemplate::from_metadata((*file)->metadata());
  ASSERT_TRUE(chat) << chat.status().message();
  const ordered_json chats = test::load_golden("chat.json.gz");
  for (const auto& t : chats["templates"]) {
    if (t["name"] != "smollm2") continue;
    for (const auto& c : t["cases"]) {
      auto text = (*chat)->render(chats["conversations"][c["conversation"].get<size_t>()], c["add_generation_prompt"].get<bool>());
      ASSERT_TRUE(text) << text.status().message();
      EXPECT_EQ(*text, c["text"].get<std::string>());
      EXPECT_EQ(ordered_json(*(*tok)->encode(*text, false)), c["ids"]);
    }
  }
}

}  // namespace
}  // namespace kvant
