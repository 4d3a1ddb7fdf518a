// Chat templates against transformers' apply_chat_template (text and ids) for every
// built-in template and the templates stored in the fixtures and SmolLM2, and kvant's
// Jinja interpreter against transformers' Jinja environment on small probes.
#include <gtest/gtest.h>

#include "runtime/chat_template.h"
#include "runtime/jinja/template.h"
#include "tests/test_util.h"
#include "tests/tokenizer_test_util.h"

namespace kvant {
namespace {

using nlohmann::ordered_json;

struct ChatSetup {
  test::TokenizerFile file;
  std::unique_ptr<ChatTemplate> chat;
};

// A golden template entry → the tokenizer and template it was rendered with.
ChatSetup setup(const ordered_json& t) {
  ChatSetup s;
  if (t["template"] == "file") {
    const std::string dir = t["dir"] == "smollm2" ? test::default_model_dir()
                                                  : test::data_dir() + "/../../" + t["dir"].get<std::string>();
    s.file = test::load_tokenizer_dir(dir);
    auto chat = ChatTemplate::from_metadata(s.file.metadata());
    if (!chat) throw std::runtime_error(chat.status().message());
    s.chat = std::move(*chat);
    return s;
  }
  // A built-in template with a fixture tokenizer that has the template's special tokens.
  ordered_json j = ordered_json::parse(
      test::read_text(test::fixture_dir("tokenizers/" + t["base"].get<std::string>()) + "/tokenizer.json"));
  for (const auto& a : t["added_tokens"]) j["added_tokens"].push_back(a);  // as transformers added them
  s.file = test::load_tokenizer_json(j.dump(), t["name"].get<std::string>());
  std::vector<std::pair<std::string, std::string>> special;
  for (const auto& [k, v] : t["special_tokens"].items()) special.emplace_back(k, v.get<std::string>());
  const std::string name = t["template"].get<std::string>().substr(std::string("builtin:").size());
  auto chat = ChatTemplate::from_source(ChatTemplate::builtin_source(name), special, name);
  if (!chat) throw std::runtime_error(chat.status().message());
  s.chat = std::move(*chat);
  return s;
}

TEST(ChatTemplates, RenderLikeApplyChatTemplate) {
  const ordered_json golden = test::load_golden("chat.json.gz");
  const auto& conversations = golden["conversations"];
  std::set<std::string> covered;
  size_t rendered = 0, raised = 0;
  for (const auto& t : golden["templates"]) {
    if (t["template"] == "zoo") continue;  // RealTemplatesOfOtherModels
    const std::string name = t["name"].get<std::string>();
    SCOPED_TRACE(name);
    if (t["template"] == "file" && t["dir"] == "smollm2" && test::default_model_dir().empty()) {
      std::cerr << "skipping SmolLM2's template: default model not fetched\n";
      continue;
    }
    const ChatSetup s = setup(t);
    for (const auto& c : t["cases"]) {
      const ordered_json& messages = conversations[c["conversation"].get<size_t>()];
      const bool gen = c["add_generation_prompt"].get<bool>();
      SCOPED_TRACE(messages.dump() + (gen ? " +generation prompt" : ""));
      auto text = s.chat->render(messages, gen);
      if (c.contains("error")) {
        ASSERT_FALSE(text) << "expected the template to raise: " << c["error"];
        EXPECT_EQ(text.status().message(), "chat template: " + c["error"].get<std::string>());
        ++raised;
        continue;
      }
      ASSERT_TRUE(text) << text.status().message();
      EXPECT_EQ(*text, c["text"].get<std::string>());
      auto ids = s.file.tokenizer->encode(*text, /*add_special_tokens=*/false);
      ASSERT_TRUE(ids);
      EXPECT_EQ(ordered_json(*ids), c["ids"]);
      ++rendered;
    }
    covered.insert(name);
  }
  for (const std::string& name : ChatTemplate::builtin_names()) EXPECT_TRUE(covered.contains(name)) << name;
  // Multi-turn conversations with and without a system prompt, and raised errors.
  EXPECT_GE(rendered, 150u);
  EXPECT_GE(raised, 10u);
}

// Templates of other real models (TinyLlama, DeepSeek-Coder, Qwen2, DBRX, MPT, CodeLlama-70b,
// Llama-3.1 with its tool-call branches, ...): text as apply_chat_template renders it.
TEST(ChatTemplates, RealTemplatesOfOtherModels) {
  const ordered_json golden = test::load_golden("chat.json.gz");
  size_t templates = 0, rendered = 0, failed = 0;
  for (const auto& t : golden["templates"]) {
    if (t["template"] != "zoo") continue;
    const std::string name = t["name"].get<std::string>();
    SCOPED_TRACE(name);
    std::vector<std::pair<std::string, std::string>> special;
    for (const auto& [k, v] : t["special_tokens"].items()) special.emplace_back(k, v.get<std::string>());
    auto chat = ChatTemplate::from_source(t["source"].get<std::string>(), special, name);
    ASSERT_TRUE(chat) << chat.status().message();
    ++templates;
    for (const auto& c : t["cases"]) {
      const ordered_json& messages = golden["conversations"][c["conversation"].get<size_t>()];
      SCOPED_TRACE(messages.dump());
      auto text = (*chat)->render(messages, c["add_generation_prompt"].get<bool>());
      if (c.contains("text")) {
        ASSERT_TRUE(text) << text.status().message();
        EXPECT_EQ(*text, c["text"].get<std::string>());
        ++rendered;
      } else {
        EXPECT_FALSE(text) << "transformers fails here (" << (c.contains("error") ? c["error"] : c["error_type"])
                           << ") but kvant rendered " << test::quoted(*text);
        if (!text && c.contains("error")) {
          EXPECT_EQ(text.status().message(), "chat template: " + c["error"].get<std::string>());
        }
        ++failed;
      }
    }
  }
  EXPECT_GE(templates, 15u);
  EXPECT_GE(rendered, 300u);
  EXPECT_GE(failed, 20u);
}

TEST(ChatTemplates, ChatMessageListRendersLikeJson) {
  const auto f = test::load_tokenizer_dir(test::fixture_dir("gpt2"));
  auto chat = ChatTemplate::from_metadata(f.metadata());
  ASSERT_TRUE(chat) << chat.status().message();
  const std::vector<ChatMessage> messages = {{"user", "Hi"}, {"assistant", "Hello"}};
  auto text = (*chat)->render(messages, true);
  ASSERT_TRUE(text);
  EXPECT_EQ(*text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplates, ProblemsPointToTheBuiltInTemplates) {
  const auto f = test::load_tokenizer_dir(test::fixture_dir("gpt2"));
  const std::string hint = "chatml, llama3, llama2, mistral, gemma, phi3";
  auto bad = ChatTemplate::from_source("{% for m in messages %}{% call foo() %}{% endcall %}{% endfor %}", {}, "t");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find(hint), std::string::npos) << bad.status().message();
  EXPECT_NE(bad.status().message().find("--chat-template NAME"), std::string::npos);
  auto runtime = ChatTemplate::from_source("{{ messages[0].content + 1 }}", {}, "t");
  ASSERT_TRUE(runtime);
  auto r = (*runtime)->render(ordered_json::parse(R"([{"role": "user", "content": "x"}])"), true);
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find(hint), std::string::npos) << r.status().message();
  auto unknown = ChatTemplate::builtin("vicuna", f.metadata());
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.status().message().find(hint), std::string::npos);
  auto ok = ChatTemplate::builtin("llama3", f.metadata());
  ASSERT_TRUE(ok);
  for (const char* input : {"[]", "{}", "[1, 2]", "\"text\""}) {
    auto rr = (*ok)->render(ordered_json::parse(input), true);
    EXPECT_FALSE(rr) << input;
  }
}

// Every probe: kvant's output equals Jinja's, and where Jinja fails kvant fails too.
TEST(Jinja, ProbesRenderLikeTransformersJinjaEnvironment) {
  const ordered_json golden = test::load_golden("jinja.json.gz");
  const jinja::Value context = jinja::Value::from_json(golden["context"]);
  size_t outputs = 0, errors = 0;
  for (const auto& c : golden["cases"]) {
    const std::string src = c["template"].get<std::string>();
    SCOPED_TRACE(test::quoted(src));
    std::string out, error;
    bool raised = false;
    try {
      out = jinja::Template::parse(src).render(context);
    } catch (const jinja::Error& e) {
      error = e.what();
      raised = e.raised();
    }
    if (c.contains("output")) {
      EXPECT_EQ(error, "");
      EXPECT_EQ(out, c["output"].get<std::string>());
      ++outputs;
    } else {
      EXPECT_NE(error, "") << "expected " << c["error"] << ", rendered " << test::quoted(out);
      if (c["error"] == "TemplateError") {
        EXPECT_TRUE(raised);
        EXPECT_EQ(error, c["message"].get<std::string>());
      }
      ++errors;
    }
  }
  EXPECT_GE(outputs, 90u);
  EXPECT_GE(errors, 20u);
}

TEST(Jinja, LimitsStopRunawayTemplates) {
  const jinja::Value ctx = jinja::Value::dict({});
  const auto fails = [&](const std::string& src) {
    try {
      jinja::Template::parse(src).render(ctx);
    } catch (const jinja::Error&) {
      return true;
    }
    return false;
  };
  EXPECT_TRUE(fails("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"));
  EXPECT_TRUE(fails("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"));
  EXPECT_TRUE(fails("{{ 'x' * 999999999999 }}"));
  EXPECT_TRUE(fails("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}"));
  std::string nested;
  for (int i = 0; i < 1000; ++i) nested += "{% if true %}";
  EXPECT_TRUE(fails(nested));  // too deep (and unclosed)
  EXPECT_TRUE(fails("{{ 9223372036854775807 + 1 }}"));
  EXPECT_TRUE(fails(std::string("{{ '\xff' }}")));
}

}  // namespace
}  // namespace kvant
