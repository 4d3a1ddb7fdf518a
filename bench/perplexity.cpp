// kvant-perplexity: perplexity of a model over a text file, with a sliding window.
//
// The text is tokenized whole; windows of --ctx tokens start every --stride tokens, and
// each window scores only the tokens the previous one did not (all of them but the first
// in the first window), with everything before them in the window as context: the method
// of transformers' perplexity guide. Each window runs in a fresh session. Output ends
// with "perplexity: X ± Y": exp(mean NLL) and its standard error (exp(mean) · the
// standard error of the mean NLL).
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <kvant.h>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string model, file, kv = "f16", device = "cpu";
  int ctx = 512, stride = 0, threads = 0, gpu_layers = -1;
  int64_t max_tokens = 0;
  bool bos = false, json = false, quiet = false;
};

[[noreturn]] void die(const std::string& what) {
  fmt::print(stderr, "kvant-perplexity: error: {}\n", what);
  std::exit(1);
}

void progress(int64_t done, int64_t total, double nll_sum, int64_t n, double seconds) {
  const int width = 30;
  const int filled = total > 0 ? static_cast<int>(width * done / total) : width;
  fmt::print(stderr, "\r[{}{}] {}/{} tokens, {:.0f} tok/s, perplexity so far {:.4f}  ", std::string(filled, '#'),
             std::string(width - filled, '.'), done, total, seconds > 0 ? static_cast<double>(done) / seconds : 0.0,
             n > 0 ? std::exp(nll_sum / static_cast<double>(n)) : 0.0);
  std::fflush(stderr);
}

int run(const Options& o) {
  std::ifstream in(o.file, std::ios::binary);
  if (!in) die(fmt::format("cannot read '{}'", o.file));
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();

  kvant_model_options mo;
  kvant_model_options_init(&mo);
  mo.device = o.device.c_str();
  mo.gpu_layers = o.gpu_layers;
  mo.progress = !o.quiet && isatty(2);
  kvant_model* model = nullptr;
  if (kvant_model_load(o.model.c_str(), &mo, &model) != KVANT_OK) die(kvant_last_error());

  size_t n_ids = 0;
  kvant_status st = kvant_tokenize(model, text.data(), text.size(), 0, nullptr, 0, &n_ids);
  if (st != KVANT_OK && st != KVANT_ERR_BUFFER_TOO_SMALL) die(kvant_last_error());
  std::vector<int32_t> ids(n_ids);
  if (kvant_tokenize(model, text.data(), text.size(), 0, ids.data(), ids.size(), &n_ids) != KVANT_OK)
    die(kvant_last_error());
  if (o.max_tokens > 0 && static_cast<int64_t>(ids.size()) > o.max_tokens) ids.resize(static_cast<size_t>(o.max_tokens));
  const auto n = static_cast<int64_t>(ids.size());
  const int32_t bos = kvant_model_bos(model);
  if (o.bos && bos < 0) die("--bos: this model has no BOS token");
  const int64_t room = o.ctx - (o.bos ? 1 : 0);  // text tokens per window
  if (room < 2) die("--ctx is too small");
  const int64_t stride = o.stride > 0 ? o.stride : std::max<int64_t>(1, room / 2);
  if (stride > room) die(fmt::format("--stride {} is longer than a window of {} text tokens", stride, room));
  if (n < 2) die(fmt::format("'{}' has {} tokens: nothing to score", o.file, n));

  kvant_session_options so;
  kvant_session_options_init(&so);
  so.n_ctx = o.ctx;
  so.kv_type = o.kv.c_str();
  so.threads = o.threads;
  so.n_batch = o.ctx;
  kvant_session* session = nullptr;
  if (kvant_session_create(model, &so, &session) != KVANT_OK) die(kvant_last_error());

  if (!o.quiet)
    fmt::print(stderr, "kvant-perplexity: {} ({}), {} tokens of '{}', window {} (stride {}), {} KV, device {}\n",
               kvant_model_name(model), kvant_model_arch(model), n, o.file, o.ctx, stride, o.kv, o.device);
  std::vector<double> nll;
  nll.reserve(static_cast<size_t>(n));
  std::vector<int32_t> window;
  std::vector<float> logprobs;
  double nll_sum = 0;
  int64_t evaluated = 0;
  const auto start = std::chrono::steady_clock::now();
  int64_t prev_end = 0;
  for (int64_t begin = 0; prev_end < n; begin += stride) {
    const int64_t end = std::min(begin + room, n);
    const int64_t first_scored = std::max<int64_t>(prev_end, begin + 1);  // a window's first token has no context
    window.clear();
    if (o.bos) window.push_back(bos);
    window.insert(window.end(), ids.begin() + begin, ids.begin() + end);
    logprobs.resize(window.size());
    kvant_session_reset(session);
    if (kvant_session_score(session, window.data(), window.size(), logprobs.data()) != KVANT_OK)
      die(kvant_last_error());
    evaluated += static_cast<int64_t>(window.size());
    const int64_t offset = (o.bos ? 1 : 0) - begin;  // index in window of text token t
    for (int64_t t = first_scored; t < end; ++t) {
      const double v = -static_cast<double>(logprobs[static_cast<size_t>(t + offset)]);
      nll.push_back(v);
      nll_sum += v;
    }
    prev_end = end;
    if (!o.quiet && isatty(2))
      progress(end, n, nll_sum, static_cast<int64_t>(nll.size()),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!o.quiet && isatty(2)) fmt::print(stderr, "\n");

  const auto count = static_cast<double>(nll.size());
  const double mean = nll_sum / count;
  double var = 0;
  for (double v : nll) var += (v - mean) * (v - mean);
  var /= count > 1 ? count - 1 : 1;
  const double ppl = std::exp(mean), se = ppl * std::sqrt(var / count);
  if (o.json) {
    const nlohmann::json j = {{"model", o.model},       {"file", o.file},       {"kv_type", o.kv},
                              {"device", o.device},     {"ctx", o.ctx},         {"stride", stride},
                              {"tokens", n},            {"scored", nll.size()}, {"evaluated", evaluated},
                              {"seconds", seconds},     {"mean_nll", mean},     {"perplexity", ppl},
                              {"perplexity_se", se}};
    fmt::print("{}\n", j.dump());
  }
  fmt::print("scored {} tokens ({} evaluated) in {:.1f} s, {:.0f} tok/s; mean NLL {:.6f}\n", nll.size(), evaluated,
             seconds, static_cast<double>(evaluated) / seconds, mean);
  fmt::print("perplexity: {:.4f} ± {:.4f}\n", ppl, se);
  kvant_session_free(session);
  kvant_model_free(model);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "kvant-perplexity: perplexity of a .kvant model over a text file, with a sliding window (each window\n"
      "scores the tokens the previous one did not, with the rest of the window as context). The last line\n"
      "is 'perplexity: X ± Y' (estimate and standard error). tools/fetch-eval-text fetches the evaluation text."};
  app.add_option("-m,--model", o.model, "model file (.kvant)")->required();
  app.add_option("-f,--file", o.file, "UTF-8 text file")->required();
  app.add_option("-c,--ctx", o.ctx, "window length in tokens")->check(CLI::Range(2, 1 << 20));
  app.add_option("--stride", o.stride, "tokens between window starts (default: half the window)");
  app.add_option("--max-tokens", o.max_tokens, "score only the first N tokens of the text (0: all)");
  app.add_option("--kv", o.kv, "KV-cache type")->check(CLI::IsMember({"f16", "q8", "q4", "f32"}));
  app.add_option("-t,--threads", o.threads, "CPU threads (0: every core)");
  app.add_option("--device", o.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--gpu-layers", o.gpu_layers, "with --device cuda: layers on the GPU (-1: all)");
  app.add_flag("--bos", o.bos, "start every window with the model's BOS token (not scored)");
  app.add_flag("--json", o.json, "also print the result as one JSON object");
  app.add_flag("-q,--quiet", o.quiet, "no progress on stderr");
  CLI11_PARSE(app, argc, argv);
  return run(o);
}
