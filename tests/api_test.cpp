// The product surface on the default model (SmolLM2-135M-Instruct, tools/fetch-default-model):
// the C API and its C++ wrapper, kvant-chat, sessions across processes, multi-turn
// prefill counters, two threads on one model, and kvant-chat's peak memory.
// Every test skips, saying so, when the default model has not been fetched.
#include <unistd.h>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <fstream>
#include <kvant.hpp>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;

#define SKIP_WITHOUT_MODEL()                                                                       \
  if (model_path("q8").empty()) GTEST_SKIP() << "the default model is not fetched (tools/fetch-default-model)"

// The default model converted once per test process.
std::string model_path(const std::string& dtype) {
  static std::map<std::string, std::string> paths;
  if (auto it = paths.find(dtype); it != paths.end()) return it->second;
  const std::string dir = kvant::test::default_model_dir();
  std::string out;
  if (!dir.empty()) {
    out = kvant::test::temp_dir() + "/smollm2-" + dtype + ".kvant";
    const auto r = kvant::test::run_command(kvant::test::bin_dir() + "/kvant-convert '" + dir + "' --dtype " + dtype +
                                            " -o '" + out + "' --quiet");
    EXPECT_EQ(r.exit_code, 0) << r.output;
  }
  return paths[dtype] = out;
}

std::string bin(const std::string& tool) { return kvant::test::bin_dir() + "/" + tool; }

std::vector<int32_t> generated_tokens(kvant::api::Session& s, size_t n_prompt) {
  size_t n = 0;
  const int32_t* t = kvant_session_tokens(s.get(), &n);
  return std::vector<int32_t>(t + n_prompt, t + n);
}

kvant_generate_options greedy(const kvant::api::Model& m, int max_tokens) {
  kvant_generate_options o;
  kvant_generate_options_init(&o, m.get());
  o.sampling.temperature = 0;
  o.max_tokens = max_tokens;
  return o;
}

TEST(Api, VersionAndErrorsNameTheProblem) {
  EXPECT_STREQ(kvant_version(), "0.1.0");
  kvant_model* m = nullptr;
  EXPECT_EQ(kvant_model_load("/nonexistent/model.kvant", nullptr, &m), KVANT_ERR_IO);
  EXPECT_NE(std::string(kvant_last_error()).find("/nonexistent/model.kvant"), std::string::npos) << kvant_last_error();
  const std::string not_kvant = kvant::test::fixture_dir("llama") + "/config.json";
  EXPECT_EQ(kvant_model_load(not_kvant.c_str(), nullptr, &m), KVANT_ERR_FORMAT);
  EXPECT_NE(std::string(kvant_last_error()).find("config.json"), std::string::npos) << kvant_last_error();
  EXPECT_EQ(m, nullptr);
  kvant_model_options o;
  kvant_model_options_init(&o);
  o.device = "tpu";
  EXPECT_EQ(kvant_model_load(not_kvant.c_str(), &o, &m), KVANT_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kvant_last_error()).find("tpu"), std::string::npos);
  EXPECT_STREQ(kvant_status_name(KVANT_ERR_CONTEXT_FULL), "KVANT_ERR_CONTEXT_FULL");
}

// kvant-chat -p prints only the answer on stdout.
TEST(Api, ChatAnswersTheCapitalOfFrance) {
  SKIP_WITHOUT_MODEL();
  const auto r = kvant::test::run_command(bin("kvant-chat") + " -m '" + model_path("q8") +
                                          "' -p 'What is the capital of France?' 2>/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::printf("kvant-chat -p 'What is the capital of France?' (q8): %s", r.output.c_str());
  EXPECT_NE(r.output.find("Paris"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("[loaded"), std::string::npos);
}

TEST(Api, ChatErrorsNameTheProblem) {
  SKIP_WITHOUT_MODEL();
  auto r = kvant::test::run_command(bin("kvant-chat") + " -m /nonexistent.kvant -p hi");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("/nonexistent.kvant"), std::string::npos) << r.output;
  r = kvant::test::run_command(bin("kvant-chat") + " -m '" + kvant::test::fixture_dir("llama") + "/config.json' -p hi");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("config.json"), std::string::npos) << r.output;
  std::string long_prompt;
  for (int i = 0; i < 200; ++i) long_prompt += "word ";
  r = kvant::test::run_command(bin("kvant-chat") + " -m '" + model_path("q8") + "' -c 64 -p '" + long_prompt + "'");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("context holds 64"), std::string::npos) << r.output;
}

// The next-token logits after a prompt.
std::vector<float> prompt_logits(const kvant::api::Model& model, const std::vector<int32_t>& ids) {
  kvant::api::Session s(model);
  EXPECT_EQ(kvant_session_prefill(s.get(), ids.data(), ids.size()), KVANT_OK);
  const float* l = kvant_session_logits(s.get());
  return std::vector<float>(l, l + model.vocab_size());
}

// Greedy continuations equal transformers' (tools/make-chat-goldens, float32): all of
// them with f16 weights. q8 weights move logits by ~0.1 (measured and printed here),
// so a q8 model may break a near-tie differently: where the tokens part, transformers'
// own margin between its choice and the runner-up must be below 0.25, and it is printed.
TEST(Api, GreedyContinuationsMatchTransformers) {
  SKIP_WITHOUT_MODEL();
  std::ifstream in(kvant::test::data_dir() + "/smollm2/chat_goldens.json");
  const auto goldens = nlohmann::json::parse(in);
  {
    kvant::api::Model f16(model_path("f16")), q8(model_path("q8"));
    for (const auto& c : goldens["cases"]) {
      const auto ids = c["prompt_ids"].get<std::vector<int32_t>>();
      const auto a = prompt_logits(f16, ids), b = prompt_logits(q8, ids);
      double sq = 0, mx = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        sq += (a[i] - b[i]) * (a[i] - b[i]);
        mx = std::max(mx, static_cast<double>(std::fabs(a[i] - b[i])));
      }
      std::printf("q8 vs f16 weights, next-token logits: RMS difference %.3f, max %.3f\n", std::sqrt(sq / a.size()), mx);
    }
  }
  for (const char* dtype : {"f16", "q8"}) {
    kvant::api::Model model(model_path(dtype));
    for (const auto& c : goldens["cases"]) {
      std::vector<kvant::api::Message> msgs;
      for (const auto& m : c["messages"]) msgs.push_back({m["role"], m["content"]});
      const auto ids = model.tokenize(model.chat(msgs));
      ASSERT_EQ(ids, c["prompt_ids"].get<std::vector<int32_t>>()) << "template and tokenizer differ from transformers";
      kvant::api::Session session(model);
      const auto opts = greedy(model, static_cast<int>(c["greedy"].size()));
      session.generate(ids, &opts);
      const auto got = generated_tokens(session, ids.size());
      const auto want = c["greedy"].get<std::vector<int32_t>>();
      const auto margins = c["margins"].get<std::vector<double>>();
      size_t same = 0;
      while (same < got.size() && same < want.size() && got[same] == want[same]) ++same;
      if (same == want.size()) {
        std::printf("%s %-60s all %zu greedy tokens equal\n", dtype, c["messages"][0]["content"].dump().c_str(), same);
        continue;
      }
      std::printf("%s %-60s equal for %zu of %zu tokens, then a near-tie: transformers' margin %.4f\n", dtype,
                  c["messages"][0]["content"].dump().c_str(), same, want.size(), margins[same]);
      EXPECT_STRNE(dtype, "f16") << "f16 weights compute what transformers computes: no near-tie breaks";
      EXPECT_LT(margins[same], 0.25) << dtype << ": diverged at token " << same << " where transformers was sure";
    }
  }
}

// kvant_generate's greedy path (Context::greedy: on a GPU the steps are queued ahead of
// the host) against the loop it replaces (decode, argmax of the logits): the same tokens,
// and where a callback or a stop string ends it, the session holds what that loop would
// (the token that completed the text, evaluated) with the same logits.
TEST(Api, GreedyGenerationStopsWhereTheLoopWould) {
  SKIP_WITHOUT_MODEL();
  kvant::api::Model model(model_path("q8"));
  const auto ids = model.tokenize(model.chat({{"user", "Tell me about the planets of the solar system."}}));
  const int vocab = model.vocab_size();
  // The loop: 24 tokens, and the logits after each.
  kvant::api::Session ref(model);
  ASSERT_EQ(kvant_session_prefill(ref.get(), ids.data(), ids.size()), KVANT_OK);
  std::vector<int32_t> want;
  std::vector<std::vector<float>> logits_after;  // [i]: after evaluating want[i]
  for (int i = 0; i < 24; ++i) {
    const float* l = kvant_session_logits(ref.get());
    want.push_back(static_cast<int32_t>(std::max_element(l, l + vocab) - l));
    ASSERT_EQ(kvant_session_decode(ref.get(), want.back()), KVANT_OK);
    l = kvant_session_logits(ref.get());
    logits_after.emplace_back(l, l + vocab);
  }
  const auto opts = greedy(model, 24);
  auto max_diff = [&](const kvant::api::Session& s, const std::vector<float>& w) {
    const float* l = kvant_session_logits(s.get());
    double m = 0;
    for (int i = 0; i < vocab; ++i) m = std::max(m, std::fabs(static_cast<double>(l[i]) - w[static_cast<size_t>(i)]));
    return m;
  };
  {  // to max_tokens
    kvant::api::Session s(model);
    s.generate(ids, &opts);
    EXPECT_EQ(generated_tokens(s, ids.size()), want);
    EXPECT_LT(max_diff(s, logits_after.back()), 1e-4);
  }
  {  // a callback that stops at its 5th piece: the token that completed it is kept
    struct Count {
      int pieces = 0;
      int32_t last = -1;
    } count;
    auto cb = [](const char*, size_t, int32_t token, void* user) -> int {
      auto* c = static_cast<Count*>(user);
      c->last = token;
      return ++c->pieces == 5 ? 1 : 0;
    };
    kvant::api::Session s(model);
    EXPECT_EQ(kvant_generate(s.get(), ids.data(), ids.size(), &opts, cb, &count), KVANT_ERR_CANCELLED);
    const auto got = generated_tokens(s, ids.size());
    ASSERT_FALSE(got.empty());
    const size_t n = got.size();
    EXPECT_EQ(got, std::vector<int32_t>(want.begin(), want.begin() + static_cast<long>(n)));
    EXPECT_EQ(got.back(), count.last);
    EXPECT_LT(max_diff(s, logits_after[n - 1]), 1e-4);
  }
  {  // a stop string taken from the middle of the text: cut there, its last token kept
    size_t n_text = 0;
    std::vector<char> buf(4096);
    ASSERT_EQ(kvant_detokenize(model.get(), want.data(), 12, 1, buf.data(), buf.size(), &n_text), KVANT_OK);
    const std::string text(buf.data(), n_text);
    ASSERT_GT(text.size(), 8u);
    const std::string stop = text.substr(text.size() - 6, 4);
    const char* stops[] = {stop.c_str()};
    auto o = opts;
    o.stop = stops;
    o.n_stop = 1;
    kvant::api::Session s(model);
    const std::string out = s.generate(ids, &o);
    EXPECT_EQ(out, text.substr(0, text.find(stop))) << "stop string '" << stop << "'";
    const auto got = generated_tokens(s, ids.size());
    ASSERT_FALSE(got.empty());
    ASSERT_LE(got.size(), 12u);
    EXPECT_EQ(got, std::vector<int32_t>(want.begin(), want.begin() + static_cast<long>(got.size())));
    EXPECT_LT(max_diff(s, logits_after[got.size() - 1]), 1e-4);
  }
}

// A session saved after a long system prompt and restored in another process continues
// with the logits of the uninterrupted one, evaluating only the user turn.
TEST(Api, SessionRestoresInANewProcess) {
  SKIP_WITHOUT_MODEL();
  const std::string file = kvant::test::temp_dir() + "/system.session";
  const std::string tool = bin("api_session_tool") + " '" + model_path("q8") + "' '" + file + "' ";
  const auto saved = kvant::test::run_command(tool + "save");
  ASSERT_EQ(saved.exit_code, 0) << saved.output;
  const auto restored = kvant::test::run_command(tool + "load");
  ASSERT_EQ(restored.exit_code, 0) << restored.output;
  std::printf("uninterrupted:\n%srestored:\n%s", saved.output.c_str(), restored.output.c_str());
  EXPECT_EQ(saved.output, restored.output);
  EXPECT_FALSE(fs::exists(file + ".tmp." + std::to_string(getpid())));
}

// The second turn evaluates only its new tokens: what the session does not already hold.
TEST(Api, SecondTurnPrefillsOnlyItsNewTokens) {
  SKIP_WITHOUT_MODEL();
  kvant::api::Model model(model_path("q8"));
  kvant::api::Session session(model);
  const auto opts = greedy(model, 24);
  std::vector<kvant::api::Message> chat = {{"system", "You are a concise assistant."},
                                           {"user", "Name a planet with rings."}};
  const auto first = model.tokenize(model.chat(chat));
  const std::string answer = session.generate(first, &opts);
  EXPECT_EQ(session.stats().prompt_tokens, static_cast<int64_t>(first.size()));

  chat.push_back({"assistant", answer});
  chat.push_back({"user", "How far is it from the Sun?"});
  const auto second = model.tokenize(model.chat(chat));
  size_t held = 0;
  const int32_t* tokens = kvant_session_tokens(session.get(), &held);
  size_t common = 0;
  while (common < held && common < second.size() && tokens[common] == second[common]) ++common;
  session.generate(second, &opts);
  const auto st = session.stats();
  std::printf("turn 2: %zu prompt tokens, %zu already held, %lld prefilled\n", second.size(), common,
              static_cast<long long>(st.prompt_tokens));
  EXPECT_EQ(st.prompt_tokens, static_cast<int64_t>(second.size() - common));
  EXPECT_LT(st.prompt_tokens, 24);  // the new user message and the template around it
  EXPECT_GE(common, first.size());
}

// One model, two sessions on two threads at once: the same text as one after the other.
TEST(Api, TwoThreadsOnOneModelMatchSequential) {
  SKIP_WITHOUT_MODEL();
  kvant::api::Model model(model_path("q8"));
  const std::vector<std::string> prompts = {"Tell me about the Moon.", "What is a prime number?"};
  kvant_session_options so;
  kvant_session_options_init(&so);
  so.n_ctx = 256;
  so.threads = 1;
  auto run = [&](const std::string& prompt) {
    kvant::api::Session s(model, &so);
    const auto opts = greedy(model, 32);
    return s.generate(model.tokenize(model.chat({{"user", prompt}})), &opts);
  };
  const std::string a = run(prompts[0]), b = run(prompts[1]);
  std::string ta, tb;
  std::thread t1([&] { ta = run(prompts[0]); });
  std::thread t2([&] { tb = run(prompts[1]); });
  t1.join();
  t2.join();
  EXPECT_EQ(ta, a);
  EXPECT_EQ(tb, b);
  EXPECT_FALSE(a.empty());
}

// kvant-perplexity's sliding windows and scores against transformers on a fixture
// (tools/make-perplexity-golden): float32 weights and KV, so the same to ~1e-5.
TEST(Tools, PerplexityMatchesTransformers) {
  std::ifstream in(kvant::test::data_dir() + "/perplexity/llama.json");
  const auto g = nlohmann::json::parse(in);
  const std::string dir = kvant::test::temp_dir(), model = dir + "/ppl-llama-f32.kvant", text = dir + "/ppl.txt";
  auto r = kvant::test::run_command(bin("kvant-convert") + " '" + kvant::test::fixture_dir("llama") +
                                    "' --dtype f32 --quiet -o '" + model + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ofstream(text, std::ios::binary) << g["text"].get<std::string>();
  r = kvant::test::run_command(bin("kvant-perplexity") + " -m '" + model + "' -f '" + text + "' --kv f32 -c " +
                               std::to_string(g["ctx"].get<int>()) + " --stride " +
                               std::to_string(g["stride"].get<int>()) + " --json -q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output.substr(0, r.output.find('\n')));
  const double got = j["perplexity"], want = g["perplexity"];
  std::printf("kvant-perplexity %.6f, transformers %.6f (%lld tokens scored)\n", got, want,
              static_cast<long long>(j["scored"].get<int64_t>()));
  EXPECT_EQ(j["scored"], g["scored"]);
  EXPECT_NEAR(got / want, 1.0, 1e-4);
  EXPECT_NE(r.output.find("perplexity: "), std::string::npos);
}

// Peak RSS of a one-shot kvant-chat on a q4 file: at most the file, the KV cache of its
// context and 64 MiB.
TEST(Api, ChatPeakMemoryIsFileKvCacheAnd64MiB) {
  SKIP_WITHOUT_MODEL();
  if (kvant::test::under_sanitizer())
    GTEST_SKIP() << "under a sanitizer, peak RSS measures the sanitizer's shadow memory";
  const std::string path = model_path("q4");
  const int64_t n_ctx = 4096;
  kvant::api::Model model(path);
  const uint64_t kv = kvant_model_kv_bytes_per_token(model.get(), "f16") * n_ctx;
  const auto file = static_cast<uint64_t>(fs::file_size(path));
  // Through peak_rss (tests/peak_rss.c): spawned from this process, the child's peak
  // would include this process's own memory.
  const auto r = kvant::test::run_command(bin("peak_rss") + " " + bin("kvant-chat") + " -m '" + path + "' -c " +
                                          std::to_string(n_ctx) + " -n 64 -p 'Write a haiku about the sea.'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  long peak_kib = 0;
  int status = -2;
  ASSERT_EQ(std::sscanf(r.output.c_str(), "%ld %d", &peak_kib, &status), 2) << r.output;
  ASSERT_EQ(status, 0) << "kvant-chat failed";
  const uint64_t peak = static_cast<uint64_t>(peak_kib) * 1024, budget = file + kv + (64ull << 20);
  std::printf("kvant-chat on q4 (%.1f MiB file, %.1f MiB KV cache at %lld positions): peak RSS %.1f MiB, "
              "budget %.1f MiB\n",
              file / 1048576.0, kv / 1048576.0, static_cast<long long>(n_ctx), peak / 1048576.0, budget / 1048576.0);
  EXPECT_LE(peak, budget);
}

}  // namespace
