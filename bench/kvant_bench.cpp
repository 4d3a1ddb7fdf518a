// kvant-bench: end-to-end prefill and decode speed, like llama-bench. Prints a markdown
// table (or JSON lines with --json) with tokens/s, effective GB/s and the share of the
// machine's memory bandwidth, which it measures itself.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "bench/membw.h"
#include "kernels/cpu/cpu_features.h"
#include "runtime/context.h"
#include "runtime/progress.h"
#include "runtime/sampler.h"
#if KVANT_HAVE_CUDA
#include "runtime/cuda_backend.h"
#endif

namespace {

using namespace kvant;
using Clock = std::chrono::steady_clock;

struct TestResult {
  std::string model_path, model_name, dtype, test, kv;
  int64_t n_prompt = 0, n_gen = 0, depth = 0, n_ctx = 0, params = 0, size_bytes = 0;
  int threads = 0;
  bool no_kv_cache = false;
  std::vector<double> tps;  // tokens/s of each repetition
  double bytes_per_token = 0;

  double mean() const {
    double s = 0;
    for (double v : tps) s += v;
    return tps.empty() ? 0 : s / static_cast<double>(tps.size());
  }
  double stddev() const {
    if (tps.size() < 2) return 0;
    const double m = mean();
    double s = 0;
    for (double v : tps) s += (v - m) * (v - m);
    return std::sqrt(s / static_cast<double>(tps.size() - 1));
  }
};

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = dist(rng);
  return t;
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A fresh sequence holding `depth` tokens (not timed).
Result<SeqId> sequence_at_depth(Context& ctx, int64_t depth, int64_t vocab) {
  KVANT_ASSIGN_OR_RETURN(const SeqId s, ctx.new_sequence());
  if (depth > 0) KVANT_TRY(ctx.eval(s, random_tokens(depth, vocab, 7)));
  return s;
}

// Tokens/s of one repetition of a "ppN" or "tgN" test.
Result<double> run_once(Context& ctx, bool prefill, int64_t n, int64_t depth, bool no_kv_cache, int64_t vocab,
                        uint64_t seed) {
  if (prefill) {
    KVANT_ASSIGN_OR_RETURN(const SeqId s, sequence_at_depth(ctx, depth, vocab));
    const auto tokens = random_tokens(n, vocab, seed);
    const auto start = Clock::now();
    KVANT_TRY(ctx.eval(s, tokens));
    const double t = seconds_since(start);
    ctx.free_sequence(s);
    return static_cast<double>(n) / t;
  }
  if (no_kv_cache) {  // every token recomputes the whole sequence so far
    std::vector<int32_t> seq = random_tokens(std::max<int64_t>(depth, 1), vocab, 7);
    const auto start = Clock::now();
    for (int64_t i = 0; i < n; ++i) {
      KVANT_ASSIGN_OR_RETURN(const SeqId s, ctx.new_sequence());
      KVANT_TRY(ctx.eval(s, seq));
      seq.push_back(argmax(ctx.logits(0)));
      ctx.free_sequence(s);
    }
    return static_cast<double>(n) / seconds_since(start);
  }
  // Greedy generation: n tokens evaluated, each the argmax of the one before (on a GPU
  // chosen there, with the next step queued ahead of the host: Context::greedy).
  KVANT_ASSIGN_OR_RETURN(const SeqId s, sequence_at_depth(ctx, depth, vocab));
  const int32_t token = random_tokens(1, vocab, seed)[0];
  int64_t evaluated = 0;
  const auto start = Clock::now();
  KVANT_TRY(ctx.greedy(s, token, n, [](int32_t) { return GreedyNext::evaluate; }, &evaluated));
  const double t = seconds_since(start);
  if (evaluated != n) return Status::error(ErrorCode::internal, "decode stopped after {} of {} tokens", evaluated, n);
  ctx.free_sequence(s);
  return static_cast<double>(n) / t;
}

std::string human_count(int64_t n) {
  return n >= 1000000000 ? fmt::format("{:.2f} B", n / 1e9) : fmt::format("{:.1f} M", n / 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvant-bench: prefill (ppN) and decode (tgN) speed of .kvant models, with effective memory\n"
               "bandwidth against the machine's measured read bandwidth."};
  std::vector<std::string> models;
  std::vector<int64_t> n_prompt = {512}, n_gen = {128}, depths = {0};
  std::vector<std::string> kv_types = {"f16"};
  std::vector<int> threads_list;
  std::string device = "cpu";
  int reps = 3;
  int gpu_layers = -1;
  int64_t n_batch = 512;
  int64_t context = 0;
  bool json = false, no_kv_cache = false, quiet = false;
  app.add_option("-m,--model", models, "model file(s)")->required()->delimiter(',');
  app.add_option("-p,--n-prompt", n_prompt, "prompt lengths to prefill (ppN tests; 0 skips); repeat or list: -p 128,512")
      ->capture_default_str()
      ->delimiter(',');
  app.add_option("-n,--n-gen", n_gen, "tokens to generate one at a time (tgN tests; 0 skips)")
      ->capture_default_str()
      ->delimiter(',');
  app.add_option("-d,--depth", depths, "tokens already in the context before each test")->capture_default_str()->delimiter(',');
  app.add_option("-c,--ctx", context,
                 "context size in tokens, as kvant-chat's -c (0: depth + the longest test + 1, the least the tests "
                 "need; kvant-chat's default is 4096): the KV cache allocated and, on the GPU, the attention's launch")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--kv", kv_types, "KV-cache types: f16, q8, q4 (f32 for reference)")->capture_default_str()->delimiter(',');
  app.add_option("-t,--threads", threads_list, "thread counts (default: all cores)")->delimiter(',');
  app.add_option("--device", device, "cpu or cuda")->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--gpu-layers", gpu_layers, "with --device cuda: layers on the GPU (-1: all)")->capture_default_str();
  app.add_option("-r,--repetitions", reps, "repetitions of each test")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("-b,--batch", n_batch, "prompt tokens per evaluation chunk")->capture_default_str();
  app.add_flag("--no-kv-cache", no_kv_cache, "decode recomputes the whole sequence for every token");
  app.add_flag("--json", json, "one JSON object per test on stdout instead of the table");
  app.add_flag("-q,--quiet", quiet, "no progress on stderr");
  CLI11_PARSE(app, argc, argv);

  const bool gpu = device == "cuda";
  std::string device_name = "cpu";
#if KVANT_HAVE_CUDA
  if (gpu && !cuda_available(&device_name)) {
    fmt::print(stderr, "kvant-bench: no CUDA GPU is available\n");
    return 1;
  }
#else
  if (gpu) {
    fmt::print(stderr, "kvant-bench: this kvant was built without CUDA\n");
    return 1;
  }
#endif
  if (threads_list.empty()) threads_list = {static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))};
#if KVANT_HAVE_CUDA
  const double bandwidth = gpu ? bench::measure_gpu_copy_bandwidth()
                               : bench::measure_read_bandwidth(*std::max_element(threads_list.begin(), threads_list.end()));
#else
  const double bandwidth = bench::measure_read_bandwidth(*std::max_element(threads_list.begin(), threads_list.end()));
#endif
  if (!quiet)
    fmt::print(stderr, "{}: measured {} bandwidth {:.1f} GB/s; CPU kernels: {}\n", device_name,
               gpu ? "device-to-device copy" : "read", bandwidth, cpu::simd_level_name(cpu::active_simd_level()));

  std::vector<TestResult> results;
  for (const auto& path : models) {
    auto model = Model::load(path);
    if (!model) {
      fmt::print(stderr, "kvant-bench: error: {}\n", model.status().message());
      return 1;
    }
    const ModelConfig& c = (*model)->config();
    int64_t params = 0;
    for (const auto& t : (*model)->file().tensors()) params += static_cast<int64_t>(t.n_elements());
    const auto dtype = (*model)->file().metadata().get_string_or("general.dtype", "?");
    std::shared_ptr<const CudaWeights> weights;
#if KVANT_HAVE_CUDA
    if (gpu) {
      auto uploaded = CudaWeights::upload(**model, gpu_layers, !quiet);
      if (!uploaded) {
        fmt::print(stderr, "kvant-bench: error: {}\n", uploaded.status().message());
        return 1;
      }
      weights = std::move(uploaded).value();
    }
#endif
    for (const auto& kv_name : kv_types) {
      auto kv = kv_type_from_name(kv_name);
      if (!kv) {
        fmt::print(stderr, "kvant-bench: error: {}\n", kv.status().message());
        return 1;
      }
      for (int threads : threads_list) {
        for (int64_t depth : depths) {
          ContextOptions o;
          o.kv_type = *kv;
          o.threads = threads;
          o.n_batch = n_batch;
          o.device = gpu ? Device::cuda : Device::cpu;
          o.gpu_layers = gpu_layers;
          o.cuda_weights = weights;
          int64_t longest = 1;
          for (int64_t p : n_prompt) longest = std::max(longest, p);
          for (int64_t g : n_gen) longest = std::max(longest, g);
          o.n_ctx = depth + longest + 1;
          if (context > 0) {
            if (context < o.n_ctx) {
              fmt::print(stderr, "kvant-bench: error: --ctx {} is too small: depth {} and a test of {} tokens need {}\n",
                         context, depth, longest, o.n_ctx);
              return 1;
            }
            o.n_ctx = context;
          }
          auto ctx = Context::create(*model, o);
          if (!ctx) {
            fmt::print(stderr, "kvant-bench: error: {}\n", ctx.status().message());
            return 1;
          }
          auto run = [&](bool prefill, int64_t n) -> int {
            if (n <= 0) return 0;
            TestResult r;
            r.model_path = path;
            r.model_name = std::string((*model)->file().metadata().get_string_or("general.name", path).value());
            r.dtype = std::string(*dtype);
            r.test = fmt::format("{}{}", prefill ? "pp" : "tg", n);
            r.kv = kv_name;
            r.n_prompt = prefill ? n : 0;
            r.n_gen = prefill ? 0 : n;
            r.depth = depth;
            r.n_ctx = o.n_ctx;
            r.threads = threads;
            r.no_kv_cache = no_kv_cache && !prefill;
            r.params = params;
            r.size_bytes = static_cast<int64_t>((*model)->file().file_size());
            // Bytes a decode step reads: every weight of the layers and head, and the KV
            // rows of the context (about depth + n/2 positions on average).
            r.bytes_per_token = static_cast<double>((*model)->decode_weight_bytes()) +
                                static_cast<double>(c.kv_bytes_per_token(*kv)) * (static_cast<double>(depth) + n / 2.0);
            for (int rep = -1; rep < reps; ++rep) {  // rep -1: warm-up, not recorded
              auto tps = run_once(**ctx, prefill, n, depth, r.no_kv_cache, c.vocab_size, 100 + static_cast<uint64_t>(rep));
              if (!tps) {
                fmt::print(stderr, "kvant-bench: error in {}: {}\n", r.test, tps.status().message());
                return 1;
              }
              if (rep >= 0) r.tps.push_back(*tps);
            }
            if (!quiet)
              fmt::print(stderr, "{} {} kv={} t={} d={}: {:.2f} tok/s\n", r.model_name, r.test, kv_name, threads, depth,
                         r.mean());
            results.push_back(std::move(r));
            return 0;
          };
          for (int64_t p : n_prompt)
            if (run(true, p)) return 1;
          for (int64_t g : n_gen)
            if (run(false, g)) return 1;
        }
      }
    }
  }

  if (json) {
    for (const auto& r : results) {
      const bool decode = r.n_gen > 0;
      const double gbs = decode ? r.mean() * r.bytes_per_token / 1e9 : 0.0;
      nlohmann::json j = {{"model", r.model_path},
                          {"model_name", r.model_name},
                          {"dtype", r.dtype},
                          {"params", r.params},
                          {"size_bytes", r.size_bytes},
                          {"test", r.test},
                          {"n_prompt", r.n_prompt},
                          {"n_gen", r.n_gen},
                          {"depth", r.depth},
                          {"n_ctx", r.n_ctx},
                          {"kv_type", r.kv},
                          {"threads", r.threads},
                          {"device", device},
                          {"device_name", device_name},
                          {"gpu_layers", gpu ? gpu_layers : 0},
                          {"simd", std::string(cpu::simd_level_name(cpu::active_simd_level()))},
                          {"no_kv_cache", r.no_kv_cache},
                          {"repetitions", r.tps.size()},
                          {"tokens_per_second", r.mean()},
                          {"tokens_per_second_stddev", r.stddev()},
                          {"gb_per_second", gbs},
                          {"bandwidth_gb_per_second", bandwidth},
                          {"bandwidth_percent", decode ? 100.0 * gbs / bandwidth : 0.0}};
      fmt::print("{}\n", j.dump());
    }
    return 0;
  }
  fmt::print("| model | dtype | size | params | kv | threads | test | depth | tok/s | GB/s | % of {:.1f} GB/s |\n", bandwidth);
  fmt::print("|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|\n");
  for (const auto& r : results) {
    const bool decode = r.n_gen > 0;
    const double gbs = decode ? r.mean() * r.bytes_per_token / 1e9 : 0.0;
    const std::string notes = std::string(r.no_kv_cache ? " (no KV cache)" : "") +
                              (context > 0 ? fmt::format(" (context {})", r.n_ctx) : "");
    fmt::print("| {} | {} | {} | {} | {} | {} | {}{} | {} | {:.2f} ± {:.2f} | {} | {} |\n", r.model_name, r.dtype,
               format_bytes(static_cast<double>(r.size_bytes)), human_count(r.params), r.kv, r.threads, r.test, notes,
               r.depth, r.mean(), r.stddev(),
               decode ? fmt::format("{:.1f}", gbs) : "-", decode ? fmt::format("{:.0f}%", 100.0 * gbs / bandwidth) : "-");
  }
  return 0;
}
