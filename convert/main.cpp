// kvant-convert: Hugging Face checkpoint directory -> one .kvant file.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstring>

#include "convert/converter.h"
#include "format/writer.h"
#include "runtime/progress.h"

namespace {

using namespace kvant;

// SIGINT/SIGTERM: remove the temporary output, leave any previous output untouched.
void on_signal(int sig) {
  const char* tmp = active_temp_path();
  if (tmp[0] != '\0') ::unlink(tmp);
  const char msg[] = "\nkvant-convert: interrupted, no output written\n";
  [[maybe_unused]] ssize_t w = ::write(STDERR_FILENO, msg, sizeof(msg) - 1);
  ::_exit(128 + sig);
}

void print_summary(const convert::ConvertReport& r, bool verbose) {
  uint64_t params = 0, matrix_params = 0, matrix_bytes = 0;
  uint64_t count_by_dtype[kDTypeCount] = {};
  for (const auto& t : r.tensors) {
    params += t.n_elements;
    ++count_by_dtype[static_cast<uint32_t>(t.dtype)];
    if (t.shape.size() == 2 && t.role != ModelConfig::TensorSpec::Role::embedding && t.role != ModelConfig::TensorSpec::Role::output) {
      matrix_params += t.n_elements;
      matrix_bytes += t.bytes;
    }
  }
  if (verbose) {
    fmt::print(stderr, "{:<28} {:>5} {:>16} {:>12} {:>12}\n", "tensor", "dtype", "shape", "bytes", "rel. RMS err");
    for (const auto& t : r.tensors) {
      std::string shape;
      for (size_t i = 0; i < t.shape.size(); ++i) shape += fmt::format("{}{}", i ? "x" : "", t.shape[i]);
      fmt::print(stderr, "{:<28} {:>5} {:>16} {:>12} {:>12.3e}\n", t.name, dtype_name(t.dtype), shape, t.bytes,
                 t.relative_rms_error());
    }
  }
  std::string dtypes;
  for (uint32_t i = 0; i < kDTypeCount; ++i)
    if (count_by_dtype[i]) dtypes += fmt::format("{}{} {}", dtypes.empty() ? "" : ", ", count_by_dtype[i],
                                                 dtype_name(static_cast<DType>(i)));
  const double seconds = r.seconds > 0 ? r.seconds : 1e-9;
  fmt::print(stderr, "tensors:          {} ({})\n", r.tensors.size(), dtypes);
  fmt::print(stderr, "parameters:       {:.1f} M\n", static_cast<double>(params) / 1e6);
  fmt::print(stderr, "output:           {} ({:.3f} bits per weight overall)\n",
             format_bytes(static_cast<double>(r.bytes_written)),
             8.0 * static_cast<double>(r.bytes_written) / static_cast<double>(params));
  if (matrix_params)
    fmt::print(stderr, "layer matrices:   {:.3f} bits per weight\n",
               8.0 * static_cast<double>(matrix_bytes) / static_cast<double>(matrix_params));
  fmt::print(stderr, "time:             {:.2f} s ({} read, {:.2f} GB/s)\n", r.seconds,
             format_bytes(static_cast<double>(r.bytes_read)), static_cast<double>(r.bytes_read) / seconds / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "kvant-convert: turn a Hugging Face model directory (config.json, model.safetensors or sharded\n"
      "model-*.safetensors with model.safetensors.index.json, tokenizer.json, tokenizer_config.json,\n"
      "generation_config.json) into one .kvant file holding weights, tokenizer, chat template and\n"
      "generation defaults.\n\n"
      "Precision rule: norm weights and biases stay F32; the output head (lm_head, or the tied\n"
      "embedding) is q8 when --dtype q4 (see --head-dtype); every other matrix takes --dtype, and a\n"
      "matrix whose rows are not a multiple of 64 long falls back to F16 for q8/q4. NaN or infinite\n"
      "weights are refused with the tensor and the index of the first one.\n\n"
      "Architectures: Llama (Llama-2, Llama-3 incl. llama3 rope scaling, TinyLlama, SmolLM/SmolLM2),\n"
      "Mistral (sliding window), Qwen2 (QKV bias), GPT-2.\n"};
  app.footer("Examples:\n"
             "  kvant-convert ~/models/SmolLM2-135M-Instruct -o smollm2-q8.kvant --dtype q8\n"
             "  kvant-convert --synthetic llama-1b --dtype q4 -o llama-1b-q4.kvant");
  std::string input, output, dtype_name_arg = "f16", head_dtype_arg, synthetic, name;
  int threads = 0;
  uint64_t seed = 1;
  bool verbose = false, quiet = false, list_shapes = false;
  app.add_option("model_dir", input, "Hugging Face model directory");
  app.add_option("-o,--output", output, "output .kvant file (written to a temporary file, renamed when complete)");
  app.add_option("-t,--dtype", dtype_name_arg, "weight type: f32, f16, bf16, q8 (8.5 bits/weight), q4 (4.5 bits/weight)")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8", "q4"}))
      ->capture_default_str();
  app.add_option("--head-dtype", head_dtype_arg, "type of the output head (default: q8 for --dtype q4, else --dtype)")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8", "q4"}));
  app.add_option("--name", name, "model name stored in the file (default: the directory name)");
  app.add_option("-j,--threads", threads, "worker threads (default: all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--synthetic", synthetic, "write random weights of a named shape instead of converting (see --list-shapes)");
  app.add_option("--seed", seed, "random seed for --synthetic")->capture_default_str();
  app.add_flag("--list-shapes", list_shapes, "list the --synthetic shapes");
  app.add_flag("-v,--verbose", verbose, "print every tensor with its type, size and relative RMS error");
  app.add_flag("-q,--quiet", quiet, "no progress bar or summary");
  CLI11_PARSE(app, argc, argv);

  if (list_shapes) {
    for (const auto& s : convert::synthetic_shape_names()) {
      const auto c = convert::synthetic_shape(s);
      fmt::print("{:<14} dim {}, {} layers, FFN {}, {} heads, {} KV heads, vocab {}\n", s, c->dim, c->n_layers,
                 c->ffn_dim, c->n_heads, c->n_kv_heads, c->vocab_size);
    }
    return 0;
  }
  if (output.empty()) {
    fmt::print(stderr, "kvant-convert: missing -o OUT.kvant\n{}", app.help());
    return 2;
  }
  if (input.empty() == synthetic.empty()) {
    fmt::print(stderr, "kvant-convert: give either a MODEL_DIR or --synthetic SHAPE\n");
    return 2;
  }

  convert::ConvertOptions options;
  options.output_path = output;
  options.dtype = *dtype_from_name(dtype_name_arg);
  if (!head_dtype_arg.empty()) options.head_dtype = dtype_from_name(head_dtype_arg);
  options.threads = threads;
  options.progress = !quiet;
  options.name = name;

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);

  Result<convert::ConvertReport> report = Status::ok();
  if (!synthetic.empty()) {
    options.quant_method = QuantMethod::absmax;  // the values are random anyway
    report = convert::write_synthetic(synthetic, seed, options);
  } else {
    report = convert::convert_checkpoint(input, options);
  }
  if (!report) {
    fmt::print(stderr, "kvant-convert: error: {}\n", report.status().message());
    return 1;
  }
  if (!quiet) {
    print_summary(*report, verbose);
    fmt::print(stderr, "wrote {}\n", output);
  }
  return 0;
}
