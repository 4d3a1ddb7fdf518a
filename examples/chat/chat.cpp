// kvant-chat: talk to a .kvant model in the terminal, or answer one prompt (-p) for
// scripts. Built on the public C API (include/kvant.h) only.
//
// Each turn renders the whole conversation with the model's chat template and hands
// the ids to kvant_generate, which keeps what the session already holds and prefills
// only the new tokens. Ctrl-C stops the answer being written, not the program.
#include <editline/readline.h>
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include <kvant.h>

namespace {

volatile sig_atomic_t g_interrupted = 0;
void on_sigint(int) { g_interrupted = 1; }

struct Options {
  std::string model, prompt, system, kv = "f16", device = "cpu", chat_template;
  int n_predict = -1, ctx = 0, threads = 0, gpu_layers = -1;
  float temperature = -1, top_p = -1, min_p = -1, repeat_penalty = -1, frequency_penalty = 0, presence_penalty = 0;
  int top_k = -1, repeat_last_n = -1;
  int64_t seed = -1;
  std::vector<std::string> stop;
  bool verbose = false, no_history = false;
};

struct Message {
  std::string role, content;
};

class Chat {
 public:
  Chat(const Options& o, kvant_model* model, kvant_session* session) : o_(o), model_(model), session_(session) {
    kvant_generate_options_init(&gen_, model);
    kvant_sampler_options& s = gen_.sampling;
    if (o.temperature >= 0) s.temperature = o.temperature;
    if (o.top_k >= 0) s.top_k = o.top_k;
    if (o.top_p >= 0) s.top_p = o.top_p;
    if (o.min_p >= 0) s.min_p = o.min_p;
    if (o.repeat_penalty >= 0) s.repetition_penalty = o.repeat_penalty;
    if (o.repeat_last_n >= 0) s.penalty_last_n = o.repeat_last_n;
    s.frequency_penalty = o.frequency_penalty;
    s.presence_penalty = o.presence_penalty;
    s.seed = o.seed >= 0 ? static_cast<uint64_t>(o.seed) : std::random_device{}();
    gen_.max_tokens = o.n_predict > 0 ? o.n_predict : 0;
    for (const auto& stop : o.stop) stops_.push_back(stop.c_str());
    gen_.stop = stops_.data();
    gen_.n_stop = stops_.size();
    reset();
  }

  void reset() {
    kvant_session_reset(session_);
    messages_.clear();
    if (!o_.system.empty()) messages_.push_back({"system", o_.system});
  }

  // One turn: the user's text in, the answer streamed to `out`. False on an error
  // (printed); an interrupted answer is kept as far as it got.
  bool turn(const std::string& user, FILE* out) {
    messages_.push_back({"user", user});
    std::vector<int32_t> ids;
    if (!render(ids)) {
      messages_.pop_back();
      return false;
    }
    answer_.clear();
    out_ = out;
    g_interrupted = 0;
    const kvant_status st = kvant_generate(session_, ids.data(), ids.size(), &gen_, &Chat::on_text, this);
    if (st != KVANT_OK && st != KVANT_ERR_CANCELLED) {
      fmt::print(stderr, "\nerror: {}\n", kvant_last_error());
      messages_.pop_back();
      return false;
    }
    fputc('\n', out);
    fflush(out);
    if (st == KVANT_ERR_CANCELLED) fmt::print(stderr, "[stopped]\n");
    messages_.push_back({"assistant", answer_});
    if (o_.verbose) print_turn_stats();
    return true;
  }

  void print_turn_stats() const {
    kvant_session_stats s;
    kvant_session_stats_get(session_, &s);
    fmt::print(stderr, "[prefill {} tokens, {:.1f} tok/s; decode {} tokens, {:.1f} tok/s; context {}/{}]\n",
               s.prompt_tokens, rate(s.prompt_tokens, s.prefill_seconds), s.generated_tokens,
               rate(s.generated_tokens, s.decode_seconds), held(), n_ctx_);
  }

  void print_stats() const {
    kvant_session_stats s;
    kvant_session_stats_get(session_, &s);
    fmt::print(stderr,
               "model      {} ({})\n"
               "context    {} of {} tokens, {} messages\n"
               "last turn  prefill {} new tokens in {:.3f} s ({:.1f} tok/s), "
               "decode {} tokens in {:.3f} s ({:.1f} tok/s)\n"
               "session    {} tokens evaluated in {} evaluations, {:.2f} s\n",
               kvant_model_name(model_), kvant_model_arch(model_), held(), n_ctx_, messages_.size(), s.prompt_tokens,
               s.prefill_seconds, rate(s.prompt_tokens, s.prefill_seconds), s.generated_tokens, s.decode_seconds,
               rate(s.generated_tokens, s.decode_seconds), s.tokens_evaluated, s.evaluations, s.eval_seconds);
  }

  bool save(const std::string& path) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& m : messages_) j.push_back({{"role", m.role}, {"content", m.content}});
    const std::string data = nlohmann::json{{"kvant_chat", 1}, {"messages", j}}.dump();
    if (kvant_session_set_user_data(session_, data.data(), data.size()) != KVANT_OK ||
        kvant_session_save(session_, path.c_str()) != KVANT_OK) {
      fmt::print(stderr, "error: {}\n", kvant_last_error());
      return false;
    }
    fmt::print(stderr, "saved {} messages, {} tokens to {}\n", messages_.size(), held(), path);
    return true;
  }

  bool load(const std::string& path) {
    if (kvant_session_load(session_, path.c_str()) != KVANT_OK) {
      fmt::print(stderr, "error: {}\n", kvant_last_error());
      return false;
    }
    size_t n = 0;
    const auto* data = static_cast<const char*>(kvant_session_user_data(session_, &n));
    std::vector<Message> restored;
    const auto j = nlohmann::json::parse(std::string_view(data ? data : "", n), nullptr, false);
    if (j.is_object() && j.contains("messages") && j["messages"].is_array()) {
      for (const auto& m : j["messages"])
        if (m.is_object() && m.value("role", nlohmann::json()).is_string() &&
            m.value("content", nlohmann::json()).is_string())
          restored.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    } else {
      fmt::print(stderr, "warning: {} was not saved by kvant-chat: the KV cache is restored, the messages are not\n",
                 path);
    }
    messages_ = std::move(restored);
    fmt::print(stderr, "restored {} messages, {} tokens from {}\n", messages_.size(), held(), path);
    return true;
  }

  void set_context_size(int64_t n) { n_ctx_ = n; }

 private:
  static double rate(int64_t n, double s) { return s > 0 ? static_cast<double>(n) / s : 0.0; }

  size_t held() const {
    size_t n = 0;
    kvant_session_tokens(session_, &n);
    return n;
  }

  bool render(std::vector<int32_t>& ids) {
    std::vector<kvant_message> msgs;
    for (const auto& m : messages_) msgs.push_back({m.role.c_str(), m.content.c_str()});
    const char* tmpl = o_.chat_template.empty() ? nullptr : o_.chat_template.c_str();
    size_t len = 0;
    kvant_status st = kvant_chat_template_apply(model_, tmpl, msgs.data(), msgs.size(), 1, nullptr, 0, &len);
    if (st != KVANT_OK && st != KVANT_ERR_BUFFER_TOO_SMALL) return report();
    std::string text(len + 1, '\0');
    if (kvant_chat_template_apply(model_, tmpl, msgs.data(), msgs.size(), 1, text.data(), text.size(), &len) !=
        KVANT_OK)
      return report();
    text.resize(len);
    size_t n = 0;
    st = kvant_tokenize(model_, text.data(), text.size(), 0, nullptr, 0, &n);
    if (st != KVANT_OK && st != KVANT_ERR_BUFFER_TOO_SMALL) return report();
    ids.resize(n);
    if (kvant_tokenize(model_, text.data(), text.size(), 0, ids.data(), ids.size(), &n) != KVANT_OK) return report();
    if (static_cast<int64_t>(n) >= n_ctx_) {
      fmt::print(stderr,
                 "error: the conversation is {} tokens, and the context holds {}: /reset to start over, "
                 "or a larger --ctx\n",
                 n, n_ctx_);
      return false;
    }
    return true;
  }

  static bool report() {
    fmt::print(stderr, "error: {}\n", kvant_last_error());
    return false;
  }

  static int on_text(const char* text, size_t len, int32_t, void* user) {
    auto* self = static_cast<Chat*>(user);
    self->answer_.append(text, len);
    fwrite(text, 1, len, self->out_);
    fflush(self->out_);
    return g_interrupted ? 1 : 0;
  }

  const Options& o_;
  kvant_model* model_;
  kvant_session* session_;
  kvant_generate_options gen_;
  std::vector<const char*> stops_;
  std::vector<Message> messages_;
  std::string answer_;
  FILE* out_ = stdout;
  int64_t n_ctx_ = 0;
};

constexpr const char* kHelp =
    "Type a message and press Enter. Commands:\n"
    "  /reset        forget the conversation (the system prompt stays)\n"
    "  /save FILE    save the conversation and its KV cache\n"
    "  /load FILE    restore a saved conversation\n"
    "  /stats        context use and the last turn's speed\n"
    "  /help         this text\n"
    "  /quit         leave (or Ctrl-D)\n"
    "Ctrl-C stops an answer while it is being written.\n";

std::string history_path() {
  const char* home = std::getenv("HOME");
  return home && *home ? std::string(home) + "/.kvant_chat_history" : "";
}

// One line of input; false at the end of input. Ctrl-C at the prompt gives an empty line.
bool read_line(bool interactive, std::string& line) {
  if (!interactive) return static_cast<bool>(std::getline(std::cin, line));
  g_interrupted = 0;
  char* raw = readline("> ");
  if (!raw) {
    if (g_interrupted) {
      fputc('\n', stdout);
      line.clear();
      return true;
    }
    return false;
  }
  line = raw;
  std::free(raw);
  if (!line.empty()) add_history(line.c_str());
  return true;
}

int run(const Options& o) {
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocked read returns
  sigaction(SIGINT, &sa, nullptr);

  const auto t0 = std::chrono::steady_clock::now();
  kvant_model_options mo;
  kvant_model_options_init(&mo);
  mo.device = o.device.c_str();
  mo.gpu_layers = o.gpu_layers;
  mo.progress = isatty(2);
  kvant_model* model = nullptr;
  if (kvant_model_load(o.model.c_str(), &mo, &model) != KVANT_OK) {
    fmt::print(stderr, "kvant-chat: error: {}\n", kvant_last_error());
    return 1;
  }
  kvant_session_options so;
  kvant_session_options_init(&so);
  so.n_ctx = o.ctx;
  so.kv_type = o.kv.c_str();
  so.threads = o.threads;
  kvant_session* session = nullptr;
  if (kvant_session_create(model, &so, &session) != KVANT_OK) {
    fmt::print(stderr, "kvant-chat: error: {}\n", kvant_last_error());
    kvant_model_free(model);
    return 1;
  }
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t n_ctx = o.ctx > 0 ? o.ctx : std::min<int64_t>(kvant_model_context_length(model), 4096);
  if (o.verbose)
    fmt::print(stderr, "[loaded {} ({}) in {:.2f} s; context {} tokens, {} KV, device {}]\n", kvant_model_name(model),
               kvant_model_arch(model), load_s, n_ctx, o.kv, o.device);

  int rc = 0;
  {
    Chat chat(o, model, session);
    chat.set_context_size(n_ctx);
    if (!o.prompt.empty()) {
      rc = chat.turn(o.prompt, stdout) ? 0 : 1;
    } else {
      const bool interactive = isatty(0);
      const std::string history = o.no_history ? "" : history_path();
      if (interactive) {
        if (!history.empty()) read_history(history.c_str());
        fmt::print(stderr, "kvant-chat: {} ({}). /help for commands, Ctrl-D to quit.\n", kvant_model_name(model),
                   kvant_model_arch(model));
      }
      std::string line;
      while (read_line(interactive, line)) {
        if (line.empty()) continue;
        if (line[0] == '/') {
          const size_t sp = line.find(' ');
          const std::string cmd = line.substr(0, sp);
          std::string arg = sp == std::string::npos ? "" : line.substr(sp + 1);
          while (!arg.empty() && arg.back() == ' ') arg.pop_back();
          if (cmd == "/quit" || cmd == "/exit") break;
          if (cmd == "/help") fmt::print(stderr, "{}", kHelp);
          else if (cmd == "/reset") {
            chat.reset();
            fmt::print(stderr, "conversation reset\n");
          } else if (cmd == "/stats") chat.print_stats();
          else if ((cmd == "/save" || cmd == "/load") && arg.empty())
            fmt::print(stderr, "usage: {} FILE\n", cmd);
          else if (cmd == "/save") chat.save(arg);
          else if (cmd == "/load") chat.load(arg);
          else fmt::print(stderr, "unknown command {} (/help lists them)\n", cmd);
          continue;
        }
        chat.turn(line, stdout);
      }
      if (interactive && !history.empty()) write_history(history.c_str());
    }
  }
  kvant_session_free(session);
  kvant_model_free(model);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "kvant-chat: chat with a .kvant model. Interactive with line editing and history (~/.kvant_chat_history),\n"
      "or one-shot with -p (only the answer goes to stdout). Sampling defaults come from the model file's\n"
      "generation settings."};
  app.add_option("-m,--model", o.model, "model file (.kvant)")->required();
  app.add_option("-p,--prompt", o.prompt, "answer this one message and exit");
  app.add_option("--system", o.system, "system prompt");
  app.add_option("-n,--n-predict", o.n_predict, "most tokens per answer (-1: until EOS or a full context)");
  app.add_option("-c,--ctx", o.ctx, "context size in tokens (0: the model's, at most 4096)");
  app.add_option("--kv", o.kv, "KV-cache type")->check(CLI::IsMember({"f16", "q8", "q4", "f32"}));
  app.add_option("-t,--threads", o.threads, "CPU threads (0: every core)");
  app.add_option("--device", o.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--gpu-layers", o.gpu_layers, "with --device cuda: layers on the GPU (-1: all)");
  app.add_option("--chat-template", o.chat_template,
                 "built-in template to use instead of the file's: chatml, llama3, llama2, mistral, gemma, phi3");
  app.add_option("--temp", o.temperature, "temperature (0: greedy)");
  app.add_option("--top-k", o.top_k, "keep the k most likely tokens (0: off)");
  app.add_option("--top-p", o.top_p, "keep the most likely tokens up to this probability mass (1: off)");
  app.add_option("--min-p", o.min_p, "drop tokens less likely than this times the most likely (0: off)");
  app.add_option("--repeat-penalty", o.repeat_penalty, "penalty for recently seen tokens (1: off)");
  app.add_option("--repeat-last-n", o.repeat_last_n, "how many recent tokens the penalties look at");
  app.add_option("--frequency-penalty", o.frequency_penalty, "subtract count times this from seen tokens' logits");
  app.add_option("--presence-penalty", o.presence_penalty, "subtract this from seen tokens' logits");
  app.add_option("-s,--seed", o.seed, "sampling seed (same seed, same text; default: random)");
  app.add_option("--stop", o.stop, "stop when the answer contains this text (repeatable)");
  app.add_flag("--no-history", o.no_history, "do not read or write the history file");
  app.add_flag("-v,--verbose", o.verbose, "print load time, and prefill and decode speed after each answer");
  CLI11_PARSE(app, argc, argv);
  return run(o);
}
