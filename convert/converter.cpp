#include "convert/converter.h"

#include <omp.h>

#include <chrono>
#include <future>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "convert/hf_model.h"
#include "convert/hf_tokenizer.h"
#include "convert/safetensors.h"
#include "format/half.h"
#include "format/writer.h"
#include "kernels/cpu/encode.h"
#include "runtime/progress.h"

namespace kvant::convert {

namespace fs = std::filesystem;
using nlohmann::json;
using Role = ModelConfig::TensorSpec::Role;

namespace {

constexpr uint64_t kChunkElements = 4u << 20;  // rows per chunk: about 16 MB of f32
constexpr const char* kConverterVersion = "kvant-convert 0.1.0";

// Produces rows [row0, row0 + n) of a tensor as f32 (row-major, `cols` per row).
// `raw` is a scratch buffer for the file bytes, reused across chunks and tensors.
using RowSource = std::function<Status(uint64_t row0, uint64_t n, float* out, std::vector<uint8_t>& raw)>;

// Buffers reused by every tensor of a conversion: allocating them per tensor costs a
// page fault per 4 KB each time (seconds of system time on a 1B-parameter model).
struct Scratch {
  std::vector<float> values[2];
  std::vector<uint8_t> encoded[2];
  std::vector<uint8_t> raw;
};

struct TensorJob {
  ModelConfig::TensorSpec spec;
  DType dtype;
  uint64_t rows, cols;
  uint64_t source_bytes;  // for the progress bar
  RowSource source;
  bool io_source = false;  // reads a file (run on the I/O thread) rather than computing
};

// First index in [0, n) whose value is not finite, or n. A branch-free scan first
// (vectorizes), the exact position only when something is wrong.
uint64_t first_non_finite(const float* v, uint64_t n) {
  uint32_t any = 0;
  for (uint64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], 4);
    any |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  if (!any) return n;
  for (uint64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) return i;
  return n;
}

uint64_t row_bytes(DType dtype, uint64_t cols) {
  switch (dtype) {
    case DType::f32: return cols * 4;
    case DType::f16: case DType::bf16: return cols * 2;
    case DType::q8: return cols;
    case DType::q4: return cols / 2;
  }
  return 0;
}

// Streams one tensor through: source rows -> f32 chunk -> encoded rows -> writer.
// Checkpoint reads and file writes run on a helper thread, overlapped with the
// encoding of the current chunk on all cores: chunk k is encoded while chunk k-1 is
// written and chunk k+1 is read. Quantized tensors keep their scales (1/16 of the
// quants for q4) until the quants are out, since the scales region comes last.
Status write_tensor(KvantWriter& writer, const TensorJob& job, QuantMethod method, Scratch& scratch,
                    TensorReport& report, const std::function<void(uint64_t)>& advance) {
  const uint64_t chunk_rows = std::max<uint64_t>(1, std::min<uint64_t>(job.rows, kChunkElements / job.cols));
  const uint64_t n_chunks = (job.rows + chunk_rows - 1) / chunk_rows;
  const uint64_t encoded_row = row_bytes(job.dtype, job.cols);
  const bool quantized = dtype_is_quantized(job.dtype);
  std::vector<uint16_t> scales(quantized ? job.rows * job.cols / kQuantBlock : 0);
  for (int i = 0; i < 2; ++i) {
    if (scratch.values[i].size() < chunk_rows * job.cols) scratch.values[i].resize(chunk_rows * job.cols);
    if (scratch.encoded[i].size() < chunk_rows * encoded_row) scratch.encoded[i].resize(chunk_rows * encoded_row);
  }
  auto rows_in = [&](uint64_t k) { return std::min(chunk_rows, job.rows - k * chunk_rows); };
  auto read_chunk = [&](uint64_t k) {
    return job.source(k * chunk_rows, rows_in(k), scratch.values[k % 2].data(), scratch.raw);
  };
  auto write_chunk = [&](uint64_t k) {
    return writer.write({scratch.encoded[k % 2].data(), rows_in(k) * encoded_row});
  };

  if (job.io_source) KVANT_TRY(read_chunk(0));
  for (uint64_t k = 0; k < n_chunks; ++k) {
    std::future<Status> io;
    if (job.io_source) {
      io = std::async(std::launch::async, [&, k]() -> Status {
        if (k > 0) KVANT_TRY(write_chunk(k - 1));
        if (k + 1 < n_chunks) KVANT_TRY(read_chunk(k + 1));
        return Status::ok();
      });
    } else {
      if (k > 0) KVANT_TRY(write_chunk(k - 1));
      KVANT_TRY(read_chunk(k));  // a computed source (synthetic): runs on all cores itself
    }
    const uint64_t row0 = k * chunk_rows;
    const auto rows = static_cast<int64_t>(rows_in(k));
    const float* values = scratch.values[k % 2].data();
    uint8_t* encoded = scratch.encoded[k % 2].data();
    double sum_sq = 0, sum_err = 0;
    int overflow = 0;
#pragma omp parallel for schedule(dynamic, 4) reduction(+ : sum_sq, sum_err) reduction(| : overflow)
    for (int64_t r = 0; r < rows; ++r) {
      const cpu::EncodeStats st =
          cpu::encode_row(job.dtype, values + r * job.cols, static_cast<int64_t>(job.cols), encoded + r * encoded_row,
                          quantized ? scales.data() + (row0 + r) * (job.cols / kQuantBlock) : nullptr, method);
      sum_sq += st.sum_sq;
      sum_err += st.sum_sq_err;
      overflow |= st.overflow ? 1 : 0;
    }
    if (io.valid()) KVANT_TRY(io.get());
    if (overflow)
      return Status::error(ErrorCode::invalid_argument,
                           "tensor '{}' has values outside the {} range (rows {} to {}); convert to another dtype",
                           job.spec.name, dtype_name(job.dtype), row0, row0 + rows - 1);
    report.sum_sq += sum_sq;
    report.sum_sq_err += sum_err;
    advance(job.source_bytes * static_cast<uint64_t>(rows) / job.rows);
  }
  KVANT_TRY(write_chunk(n_chunks - 1));
  if (quantized) KVANT_TRY(writer.write({reinterpret_cast<const uint8_t*>(scales.data()), scales.size() * 2}));
  return Status::ok();
}

// Serial on purpose: it runs on the I/O thread, beside the encoders.
void convert_to_f32(SourceType type, const uint8_t* raw, uint64_t n, float* out) {
  switch (type) {
    case SourceType::f32:
      std::memcpy(out, raw, n * 4);
      return;
    case SourceType::f16:
      for (uint64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, raw + i * 2, 2);
        out[i] = f16_to_f32(h);
      }
      return;
    case SourceType::bf16:
      for (uint64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, raw + i * 2, 2);
        out[i] = bf16_to_f32(h);
      }
      return;
    case SourceType::f64:
      for (uint64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, raw + i * 8, 8);
        out[i] = static_cast<float>(d);
      }
      return;
  }
}

// Reads kvant rows from a checkpoint tensor per its TensorSource (direct, sliced or transposed).
RowSource checkpoint_rows(const Checkpoint& ckpt, const SourceTensor& src, const TensorSource& how, uint64_t cols,
                          const std::string& kvant_name) {
  auto check_finite = [&src, kvant_name](const float* v, uint64_t n, uint64_t first_element) -> Status {
    const uint64_t bad = first_non_finite(v, n);
    if (bad == n) return Status::ok();
    return Status::error(ErrorCode::invalid_argument,
                         "checkpoint tensor '{}' (for '{}') has a non-finite value ({}) at element {}; kvant refuses "
                         "to convert NaN or infinite weights",
                         src.name, kvant_name, v[bad], first_element + bad);
  };
  if (!how.transpose) {
    return [&ckpt, &src, how, cols, check_finite](uint64_t row0, uint64_t n, float* out,
                                                  std::vector<uint8_t>& raw) -> Status {
      const size_t es = source_type_size(src.type);
      const uint64_t first = (how.row_begin + row0) * (how.source_shape.size() == 1 ? 1 : cols);
      const uint64_t count = n * cols;
      if (raw.size() < count * es) raw.resize(count * es);
      KVANT_TRY(ckpt.read(src, first * es, count * es, raw.data()));
      ckpt.prefetch(src, (first + count) * es, count * es);
      convert_to_f32(src.type, raw.data(), count, out);
      return check_finite(out, count, first);
    };
  }
  // Transposed (GPT-2 Conv1D): load the whole source once, then hand out its columns.
  auto full = std::make_shared<std::vector<float>>();
  return [&ckpt, &src, how, cols, full, check_finite](uint64_t row0, uint64_t n, float* out,
                                                      std::vector<uint8_t>&) -> Status {
    const uint64_t src_rows = how.source_shape[0], src_cols = how.source_shape[1];
    if (full->empty()) {
      std::vector<uint8_t> raw(src.size);
      KVANT_TRY(ckpt.read(src, 0, src.size, raw.data()));
      full->resize(src_rows * src_cols);
      convert_to_f32(src.type, raw.data(), src_rows * src_cols, full->data());
      KVANT_TRY(check_finite(full->data(), full->size(), 0));
    }
    for (uint64_t r = 0; r < n; ++r)  // kvant row = source column
      for (uint64_t c = 0; c < cols; ++c) out[r * cols + c] = (*full)[c * src_cols + how.row_begin + row0 + r];
    return Status::ok();
  };
}

std::string shape_string(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", shape[i]);
  return s + "]";
}

// Runs the jobs through a writer; shared by checkpoint conversion and synthetic models.
Result<ConvertReport> run_jobs(KvantWriter& writer, std::vector<TensorJob>& jobs, const ModelConfig& config,
                               const ConvertOptions& options, const char* label) {
  const auto start = std::chrono::steady_clock::now();
  ConvertReport report;
  report.config = config;
  for (const auto& job : jobs) KVANT_TRY(writer.add_tensor(job.spec.name, job.dtype, job.spec.shape));
  KVANT_TRY(writer.begin());
  uint64_t total = 0;
  for (const auto& job : jobs) total += job.source_bytes;
  ProgressBar bar(label, total, "B", options.progress);
  uint64_t done = 0;
  Scratch scratch;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const TensorJob& job = jobs[i];
    TensorReport tr;
    tr.name = job.spec.name;
    tr.dtype = job.dtype;
    tr.shape = job.spec.shape;
    tr.n_elements = job.rows * job.cols;
    tr.bytes = writer.tensor_size(i);
    tr.role = job.spec.role;
    uint64_t tensor_done = 0;
    KVANT_TRY(write_tensor(writer, job, options.quant_method, scratch, tr, [&](uint64_t bytes) {
      tensor_done += bytes;
      bar.update(done + tensor_done, job.spec.name);
    }));
    done += job.source_bytes;
    jobs[i].source = nullptr;  // frees the job's read buffers: memory stays at one tensor's chunk
    report.tensors.push_back(std::move(tr));
  }
  KVANT_TRY(writer.commit());
  bar.finish();
  report.bytes_read = total;
  report.bytes_written = writer.file_size();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

void set_thread_count(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
}

void write_general_metadata(KvantWriter& w, const std::string& name, const std::string& source, DType dtype) {
  w.set("general.name", name);
  w.set("general.source", source);
  w.set("general.converter", std::string(kConverterVersion));
  w.set("general.dtype", std::string(dtype_name(dtype)));
}

}  // namespace

DType choose_dtype(const ModelConfig& config, const ModelConfig::TensorSpec& spec, DType requested,
                   std::optional<DType> head_dtype) {
  if (spec.shape.size() == 1) return DType::f32;
  const bool is_head = spec.role == Role::output || (spec.name == "token_embd" && config.tie_embeddings);
  DType want = requested;
  if (is_head) want = head_dtype.value_or(requested == DType::q4 ? DType::q8 : requested);
  if (dtype_is_quantized(want) && spec.shape.back() % kQuantGroup != 0) return DType::f16;
  return want;
}

Result<ConvertReport> convert_checkpoint(const std::string& model_dir, const ConvertOptions& options) {
  set_thread_count(options.threads);
  std::error_code ec;
  if (!fs::exists(model_dir, ec)) return Status::error(ErrorCode::io, "model directory '{}' does not exist", model_dir);
  if (!fs::is_directory(model_dir, ec))
    return Status::error(ErrorCode::io, "'{}' is not a directory (pass the Hugging Face model directory)", model_dir);
  const std::string config_path = (fs::path(model_dir) / "config.json").string();
  if (!fs::exists(config_path, ec)) return Status::error(ErrorCode::io, "'{}' has no config.json", model_dir);
  KVANT_ASSIGN_OR_RETURN(const std::string config_text, read_text_file(config_path, 16u << 20));
  const json config_json = json::parse(config_text, nullptr, false);
  if (config_json.is_discarded()) return Status::error(ErrorCode::format, "{}: not valid JSON", config_path);
  KVANT_ASSIGN_OR_RETURN(const ModelConfig config, parse_hf_config(config_json, config_path));
  KVANT_ASSIGN_OR_RETURN(const auto checkpoint, Checkpoint::open_dir(model_dir));
  KVANT_ASSIGN_OR_RETURN(const TokenizerImport tokenizer, import_tokenizer(model_dir, config_json, config.vocab_size));

  std::vector<TensorJob> jobs;
  std::vector<const SourceTensor*> used;
  for (const auto& spec : config.tensor_specs()) {
    const TensorSource how = hf_tensor_source(config, spec);
    const SourceTensor* src = checkpoint->find(how.hf_name);
    if (!src && config.arch == Arch::gpt2) src = checkpoint->find("transformer." + how.hf_name);
    if (!src)
      return Status::error(ErrorCode::format, "{}: checkpoint has no tensor '{}' (needed for '{}')", model_dir,
                           how.hf_name, spec.name);
    if (src->shape != how.source_shape)
      return Status::error(ErrorCode::format, "{}: tensor '{}' has shape {} but config.json implies {}", model_dir,
                           src->name, src->shape_string(), shape_string(how.source_shape));
    used.push_back(src);
    TensorJob job;
    job.spec = spec;
    job.dtype = choose_dtype(config, spec, options.dtype, options.head_dtype);
    job.cols = spec.shape.back();
    job.rows = spec.shape.size() == 1 ? 1 : spec.shape[0];
    job.source_bytes = job.rows * job.cols * source_type_size(src->type);
    job.source = checkpoint_rows(*checkpoint, *src, how, job.cols, spec.name);
    job.io_source = true;
    jobs.push_back(std::move(job));
  }
  std::vector<std::string> unused;
  for (const auto& t : checkpoint->tensors()) {
    const bool is_used = std::find(used.begin(), used.end(), &t) != used.end();
    const bool tied_head = config.tie_embeddings && (t.name == "lm_head.weight");
    if (!is_used && !tied_head && !hf_tensor_is_ignorable(t.name)) unused.push_back(t.name);
  }
  if (!unused.empty())
    fmt::print(stderr, "warning: {} checkpoint tensor(s) not used by the {} architecture, e.g. '{}'\n", unused.size(),
               arch_name(config.arch), unused.front());

  KvantWriter writer(options.output_path);
  const std::string name = options.name.empty() ? fs::path(model_dir).lexically_normal().filename().string()
                                                : options.name;
  write_general_metadata(writer, name.empty() ? "model" : name, fs::absolute(model_dir).lexically_normal().string(),
                         options.dtype);
  config.to_metadata(writer);
  tokenizer.to_metadata(writer);
  return run_jobs(writer, jobs, config, options, "converting");
}

// ---------------------------------------------------------------------------------
// Synthetic models: random weights of standard shapes, for speed work.

namespace {

struct NamedShape {
  const char* name;
  ModelConfig config;
};

ModelConfig llama_shape(uint32_t dim, uint32_t layers, uint32_t ffn, uint32_t heads, uint32_t kv_heads,
                        uint32_t vocab, uint32_t max_seq, float theta, bool tied) {
  ModelConfig c;
  c.arch = Arch::llama;
  c.dim = dim;
  c.n_layers = layers;
  c.ffn_dim = ffn;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = dim / heads;
  c.vocab_size = vocab;
  c.max_seq_len = max_seq;
  c.rope_theta = theta;
  c.tie_embeddings = tied;
  return c;
}

const std::vector<NamedShape>& named_shapes() {
  static const std::vector<NamedShape> shapes = {
      {"llama2-7b", llama_shape(4096, 32, 11008, 32, 32, 32000, 4096, 10000.0f, false)},
      {"llama-1b", llama_shape(2048, 16, 8192, 32, 8, 32000, 4096, 500000.0f, false)},
      {"smollm2-135m", llama_shape(576, 30, 1536, 9, 3, 49152, 8192, 100000.0f, true)},
      {"tiny", llama_shape(256, 2, 512, 4, 2, 512, 512, 10000.0f, false)},
  };
  return shapes;
}

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

std::vector<std::string> synthetic_shape_names() {
  std::vector<std::string> names;
  for (const auto& s : named_shapes()) names.emplace_back(s.name);
  return names;
}

Result<ModelConfig> synthetic_shape(const std::string& name) {
  for (const auto& s : named_shapes())
    if (name == s.name) return s.config;
  std::string list;
  for (const auto& n : synthetic_shape_names()) list += (list.empty() ? "" : ", ") + n;
  return Status::error(ErrorCode::invalid_argument, "unknown synthetic shape '{}' (known: {})", name, list);
}

Result<ConvertReport> write_synthetic(const std::string& shape, uint64_t seed, const ConvertOptions& options) {
  set_thread_count(options.threads);
  KVANT_ASSIGN_OR_RETURN(const ModelConfig config, synthetic_shape(shape));
  std::vector<TensorJob> jobs;
  uint64_t index = 0;
  for (const auto& spec : config.tensor_specs()) {
    TensorJob job;
    job.spec = spec;
    job.dtype = choose_dtype(config, spec, options.dtype, options.head_dtype);
    job.cols = spec.shape.back();
    job.rows = spec.shape.size() == 1 ? 1 : spec.shape[0];
    job.source_bytes = job.rows * job.cols * 4;
    const bool is_norm = spec.role == Role::norm;
    // Uniform weights with standard deviation 1/sqrt(cols) keep activations O(1);
    // norm weights are 1. Each row has its own seed, so the file is the same for any
    // thread count.
    const float amplitude = std::sqrt(3.0f / static_cast<float>(job.cols));
    const uint64_t tensor_seed = seed * 0x100000001b3ull + (++index << 32);
    const uint64_t cols = job.cols;
    job.source = [=](uint64_t row0, uint64_t n, float* out, std::vector<uint8_t>&) -> Status {
      const auto rows = static_cast<int64_t>(n);
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        uint64_t state = tensor_seed + row0 + static_cast<uint64_t>(r);
        float* row = out + r * cols;
        for (uint64_t c = 0; c < cols; ++c) {
          if (is_norm) {
            row[c] = 1.0f;
            continue;
          }
          const uint64_t bits = splitmix64(state);
          const float u = static_cast<float>(bits >> 40) * 0x1p-24f;  // [0, 1)
          row[c] = (2.0f * u - 1.0f) * amplitude;
        }
      }
      return Status::ok();
    };
    jobs.push_back(std::move(job));
  }
  KvantWriter writer(options.output_path);
  write_general_metadata(writer, options.name.empty() ? "synthetic-" + shape : options.name, "synthetic:" + shape,
                         options.dtype);
  writer.set("general.synthetic_seed", seed);
  config.to_metadata(writer);
  writer.set("tokenizer.model", std::string("none"));
  return run_jobs(writer, jobs, config, options, "generating");
}

}  // namespace kvant::convert
