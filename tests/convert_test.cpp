// kvant-convert on the per-architecture fixtures and the default model: shapes and
// hyperparameters read back right, values are exact or within stated error, and bad
// input gives a named error with no output file left behind.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "convert/converter.h"
#include "convert/hf_model.h"
#include "convert/safetensors.h"
#include "format/half.h"
#include "format/model_config.h"
#include "format/quant.h"
#include "format/reader.h"
#include "tests/test_util.h"

namespace kvant {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char* kFixtures[] = {"llama", "llama3", "mistral", "qwen2", "gpt2"};

json load_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

std::string convert(const std::string& dir, DType dtype, const std::string& tag, convert::ConvertReport* report = nullptr) {
  const std::string out = test::temp_dir() + "/" + tag + "-" + std::string(dtype_name(dtype)) + ".kvant";
  convert::ConvertOptions o;
  o.output_path = out;
  o.dtype = dtype;
  o.progress = false;
  auto r = convert::convert_checkpoint(dir, o);
  EXPECT_TRUE(r) << dir << ": " << r.status().message();
  if (r && report) *report = *r;
  return out;
}

// Values of a kvant tensor, dequantized to f32.
std::vector<float> tensor_values(const KvantFile& f, const TensorInfo& t) {
  const auto bytes = f.data(t);
  const uint64_t rows = t.rows(), cols = t.cols();
  std::vector<float> v(rows * cols);
  switch (t.dtype) {
    case DType::f32: std::memcpy(v.data(), bytes.data(), v.size() * 4); break;
    case DType::f16:
    case DType::bf16:
      for (size_t i = 0; i < v.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, bytes.data() + 2 * i, 2);
        v[i] = t.dtype == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      break;
    case DType::q8:
    case DType::q4: {
      const uint64_t qbytes = quant_region_bytes(t.dtype, rows, cols);
      const auto* scales = reinterpret_cast<const uint16_t*>(bytes.data() + qbytes);
      for (uint64_t r = 0; r < rows; ++r) {
        if (t.dtype == DType::q8)
          dequantize_row_q8(reinterpret_cast<const int8_t*>(bytes.data()) + r * cols, scales + r * cols / 32,
                            static_cast<int64_t>(cols), v.data() + r * cols);
        else
          dequantize_row_q4(bytes.data() + r * cols / 2, scales + r * cols / 32, static_cast<int64_t>(cols),
                            v.data() + r * cols);
      }
      break;
    }
  }
  return v;
}

// Source values of a kvant tensor, read straight from the checkpoint (transposed and
// sliced as the converter must do), as f32, plus the raw source type.
std::vector<float> source_values(const std::string& dir, const ModelConfig& c, const ModelConfig::TensorSpec& spec,
                                 convert::SourceType* type) {
  auto ckpt = convert::Checkpoint::open_dir(dir);
  EXPECT_TRUE(ckpt);
  const auto how = convert::hf_tensor_source(c, spec);
  const convert::SourceTensor* src = ckpt.value()->find(how.hf_name);
  if (!src) src = ckpt.value()->find("transformer." + how.hf_name);
  EXPECT_NE(src, nullptr) << how.hf_name;
  *type = src->type;
  std::vector<uint8_t> raw(src->size);
  EXPECT_TRUE(ckpt.value()->read(*src, 0, src->size, raw.data()));
  std::vector<float> all(src->n_elements());
  for (size_t i = 0; i < all.size(); ++i) {
    uint16_t h;
    switch (src->type) {
      case convert::SourceType::f32: std::memcpy(&all[i], raw.data() + 4 * i, 4); break;
      case convert::SourceType::f16: std::memcpy(&h, raw.data() + 2 * i, 2); all[i] = f16_to_f32(h); break;
      case convert::SourceType::bf16: std::memcpy(&h, raw.data() + 2 * i, 2); all[i] = bf16_to_f32(h); break;
      case convert::SourceType::f64: break;
    }
  }
  const uint64_t cols = spec.shape.back(), rows = spec.shape.size() == 1 ? 1 : spec.shape[0];
  std::vector<float> out(rows * cols);
  for (uint64_t r = 0; r < rows; ++r)
    for (uint64_t k = 0; k < cols; ++k) {
      if (how.transpose) out[r * cols + k] = all[k * how.source_shape[1] + how.row_begin + r];
      else if (spec.shape.size() == 1) out[k] = all[how.row_begin + k];
      else out[r * cols + k] = all[(how.row_begin + r) * cols + k];
    }
  return out;
}

TEST(Convert, EveryFixtureReadsBackWithTheRightShapes) {
  for (const char* name : kFixtures) {
    const std::string dir = test::fixture_dir(name);
    const json config = load_json(dir + "/config.json");
    const json golden = load_json(dir + "/golden.json");
    for (DType dtype : {DType::f32, DType::f16, DType::q8, DType::q4}) {
      auto f = KvantFile::open(convert(dir, dtype, name), /*verify_tensors=*/true);
      ASSERT_TRUE(f) << f.status().message();
      auto c = ModelConfig::from_metadata(f.value()->metadata());
      ASSERT_TRUE(c) << c.status().message();
      const bool gpt2 = std::string(name) == "gpt2";
      EXPECT_EQ(c->dim, 64u) << name;
      EXPECT_EQ(c->n_layers, 2u);
      EXPECT_EQ(c->n_heads, 4u);
      EXPECT_EQ(c->n_kv_heads, gpt2 ? 4u : 2u);
      EXPECT_EQ(c->head_dim, 16u);
      EXPECT_EQ(c->ffn_dim, 128u);
      EXPECT_EQ(c->vocab_size, golden["n_vocab"].get<uint32_t>());
      EXPECT_EQ(c->tie_embeddings, config.value("tie_word_embeddings", gpt2));
      const auto specs = c->tensor_specs();
      ASSERT_EQ(f.value()->tensors().size(), specs.size()) << name;
      for (const auto& s : specs) {
        const TensorInfo* t = f.value()->find_tensor(s.name);
        ASSERT_NE(t, nullptr) << name << " lacks " << s.name;
        EXPECT_EQ(std::vector<uint64_t>(t->shape.begin(), t->shape.begin() + t->n_dims), s.shape) << s.name;
        if (s.shape.size() == 1) {
          EXPECT_EQ(t->dtype, DType::f32) << s.name;  // norms and biases stay F32
        }
      }
      const Metadata& m = f.value()->metadata();
      EXPECT_EQ(*m.get_string("model.arch"), std::string(name) == "llama3" ? "llama" : name);
      EXPECT_FALSE(m.get_string("chat.template")->empty()) << name;
      EXPECT_FALSE(m.get_u32_array("generation.eos_ids")->empty()) << name;
      EXPECT_EQ(m.get_string_array("tokenizer.tokens")->size(), c->vocab_size);
      EXPECT_EQ(m.get_u32_array("tokenizer.merges")->size(), 400u);  // 200 merges as id pairs
    }
  }
  // Architecture details that must survive.
  auto l3 = KvantFile::open(convert(test::fixture_dir("llama3"), DType::f16, "llama3"));
  auto c3 = ModelConfig::from_metadata(l3.value()->metadata());
  EXPECT_EQ(c3->rope_scaling, RopeScaling::llama3);
  EXPECT_EQ(c3->rope_factor, 8.0f);
  EXPECT_EQ(c3->rope_original_max_seq_len, 64u);
  EXPECT_EQ(c3->rope_theta, 500000.0f);
  EXPECT_EQ(l3.value()->metadata().get_u32_array("generation.eos_ids")->size(), 2u);
  auto mi = KvantFile::open(convert(test::fixture_dir("mistral"), DType::f16, "mistral"));
  EXPECT_EQ(ModelConfig::from_metadata(mi.value()->metadata())->sliding_window, 8u);
  auto qw = KvantFile::open(convert(test::fixture_dir("qwen2"), DType::f16, "qwen2"));
  EXPECT_TRUE(ModelConfig::from_metadata(qw.value()->metadata())->qkv_bias);
  EXPECT_NE(qw.value()->find_tensor("layers.1.attn_k_bias"), nullptr);
}

// Every tensor of every architecture, tied head or not, names where it comes from in
// the checkpoint (an untied GPT-2 head had none; found by fuzz_hf_config).
TEST(Convert, EveryTensorNamesItsCheckpointSource) {
  for (const char* name : kFixtures) {
    for (const bool tied : {true, false}) {
      json config = load_json(test::fixture_dir(name) + "/config.json");
      config["tie_word_embeddings"] = tied;
      auto c = convert::parse_hf_config(config, "config.json");
      ASSERT_TRUE(c) << name << ": " << c.status().message();
      EXPECT_EQ(c->tie_embeddings, tied);
      bool has_output = false;
      for (const auto& spec : c->tensor_specs()) {
        const auto how = convert::hf_tensor_source(*c, spec);
        EXPECT_FALSE(how.hf_name.empty()) << name << (tied ? " tied: " : " untied: ") << spec.name;
        if (spec.name == "output") {
          has_output = true;
          EXPECT_EQ(how.hf_name, "lm_head.weight") << name;
        }
      }
      EXPECT_EQ(has_output, !tied) << name;
    }
  }
}

TEST(Convert, ValuesAreExactOrWithinStatedError) {
  for (const char* name : kFixtures) {
    const std::string dir = test::fixture_dir(name);
    for (DType dtype : {DType::f32, DType::f16, DType::q8, DType::q4}) {
      convert::ConvertReport report;
      auto f = KvantFile::open(convert(dir, dtype, std::string(name) + "-values", &report));
      ASSERT_TRUE(f);
      const auto c = *ModelConfig::from_metadata(f.value()->metadata());
      for (const auto& spec : c.tensor_specs()) {
        const TensorInfo& t = *f.value()->find_tensor(spec.name);
        convert::SourceType type;
        const auto src = source_values(dir, c, spec, &type);
        const auto got = tensor_values(*f.value(), t);
        ASSERT_EQ(src.size(), got.size());
        double err = 0, sq = 0;
        for (size_t i = 0; i < src.size(); ++i) {
          if (t.dtype == DType::f32) {
            ASSERT_EQ(got[i], src[i]) << name << " " << spec.name << " [" << i << "]";  // exact
          } else if (t.dtype == DType::f16) {
            // Exact where the source is F16; otherwise the correctly rounded f16 of the
            // exact source value (BF16 and F32 are exact in f32).
            ASSERT_EQ(f32_to_f16(got[i]), f32_to_f16(src[i])) << name << " " << spec.name << " [" << i << "]";
            if (type == convert::SourceType::f16) {
              ASSERT_EQ(got[i], src[i]);
            }
          }
          err += (got[i] - src[i]) * static_cast<double>(got[i] - src[i]);
          sq += src[i] * static_cast<double>(src[i]);
        }
        const double rel = std::sqrt(err / sq);
        if (t.dtype == DType::q8) {
          EXPECT_LT(rel, 0.006) << name << " " << spec.name;
        }
        if (t.dtype == DType::q4) {
          EXPECT_LT(rel, 0.11) << name << " " << spec.name;
        }
        // The converter's own per-tensor report measures the same error.
        for (const auto& tr : report.tensors)
          if (tr.name == spec.name) {
            EXPECT_NEAR(tr.relative_rms_error(), rel, 1e-4 + 1e-3 * rel) << spec.name;
          }
      }
    }
  }
}

// ---- bad input -------------------------------------------------------------------------

std::string copy_fixture(const std::string& name, const std::string& tag) {
  const std::string dst = test::temp_dir() + "/" + tag;
  fs::remove_all(dst);
  fs::copy(test::fixture_dir(name), dst, fs::copy_options::recursive);
  return dst;
}

void edit_json(const std::string& path, const std::function<void(json&)>& edit) {
  json j = load_json(path);
  edit(j);
  std::ofstream(path) << j.dump(1);
}

// Expects conversion of `dir` to fail with `phrase` in the message and no output file.
void expect_failure(const std::string& dir, const std::string& phrase) {
  const std::string out = test::temp_dir() + "/should-not-exist.kvant";
  convert::ConvertOptions o;
  o.output_path = out;
  o.progress = false;
  auto r = convert::convert_checkpoint(dir, o);
  ASSERT_FALSE(r) << dir << " converted but should not";
  EXPECT_NE(r.status().message().find(phrase), std::string::npos) << r.status().message();
  EXPECT_FALSE(test::file_exists(out));
  for (const auto& e : fs::directory_iterator(test::temp_dir()))
    EXPECT_EQ(e.path().filename().string().find("should-not-exist.kvant.tmp"), std::string::npos);
}

// Rewrites model.safetensors with `edit` applied to the tensor table (name -> f32 values).
void rewrite_safetensors(const std::string& dir, const std::function<void(std::map<std::string, std::pair<std::vector<uint64_t>, std::vector<float>>>&)>& edit) {
  auto ckpt = convert::Checkpoint::open_dir(dir);
  ASSERT_TRUE(ckpt);
  std::map<std::string, std::pair<std::vector<uint64_t>, std::vector<float>>> tensors;
  for (const auto& t : ckpt.value()->tensors()) {
    ASSERT_EQ(t.type, convert::SourceType::f32);
    std::vector<float> v(t.n_elements());
    ASSERT_TRUE(ckpt.value()->read(t, 0, t.size, v.data()));
    tensors[t.name] = {t.shape, v};
  }
  edit(tensors);
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", "F32"}, {"shape", t.first}, {"data_offsets", {offset, offset + t.second.size() * 4}}};
    offset += t.second.size() * 4;
  }
  const std::string h = header.dump();
  std::ofstream out(dir + "/model.safetensors", std::ios::binary | std::ios::trunc);
  const uint64_t n = h.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << h;
  for (const auto& [name, t] : tensors) out.write(reinterpret_cast<const char*>(t.second.data()), static_cast<long>(t.second.size() * 4));
}

TEST(ConvertErrors, BadModelDirectories) {
  expect_failure(test::temp_dir() + "/no-such-dir", "does not exist");
  const std::string file = test::temp_dir() + "/plain-file";
  test::write_file(file, {'x'});
  expect_failure(file, "not a directory");
  const std::string empty = test::temp_dir() + "/empty-dir";
  fs::create_directories(empty);
  expect_failure(empty, "config.json");
}

TEST(ConvertErrors, ConfigProblemsAreNamed) {
  struct Case {
    const char* tag;
    std::function<void(json&)> edit;
    const char* phrase;
  };
  const std::vector<Case> cases = {
      {"arch", [](json& j) { j["model_type"] = "bert"; }, "unsupported architecture"},
      {"missing", [](json& j) { j.erase("hidden_size"); }, "missing key 'hidden_size'"},
      {"layers", [](json& j) { j["num_hidden_layers"] = 1000000000000ll; }, "num_hidden_layers"},
      {"zero-heads", [](json& j) { j["num_attention_heads"] = 0; }, "num_attention_heads is 0"},
      {"not-dividing", [](json& j) { j["num_attention_heads"] = 5; j.erase("head_dim"); }, "not divisible"},
      {"vocab", [](json& j) { j["vocab_size"] = 0; }, "vocab_size"},
      {"type", [](json& j) { j["hidden_size"] = "64"; }, "must be an integer"},
      {"shape", [](json& j) { j["intermediate_size"] = 192; }, "but config.json implies"},
      {"act", [](json& j) { j["hidden_act"] = "relu"; }, "hidden_act 'relu'"},
      {"huge-number", [](json& j) { j["hidden_size"] = 6.4e52; }, "key 'hidden_size' = 6.4e+52 is out of range"},
      {"fraction", [](json& j) { j["hidden_size"] = 64.5; }, "key 'hidden_size' must be an integer"},
      {"negative", [](json& j) { j["num_hidden_layers"] = -2; }, "key 'num_hidden_layers' = -2 is out of range"},
      {"kv-heads", [](json& j) { j["num_key_value_heads"] = 3; }, "n_kv_heads = 3 is invalid: must divide n_heads (4)"},
      {"odd-head-dim", [](json& j) { j["head_dim"] = 15; }, "head_dim = 15 is invalid"},
      {"no-positions", [](json& j) { j["max_position_embeddings"] = 0; }, "max_seq_len = 0 is invalid"},
      {"eps", [](json& j) { j["rms_norm_eps"] = -1; }, "norm_eps = -1 is invalid"},
      {"not-object", [](json& j) { j = json::array({1, 2}); }, "config.json: not a JSON object"},
      // A label of the nested object outlived by its reader (found by fuzz_hf_config).
      {"rope-missing-key",
       [](json& j) {
         j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                              {"original_max_position_embeddings", 64}};
       },
       "config.json rope parameters: missing key 'high_freq_factor'"},
  };
  for (const auto& c : cases) {
    const std::string dir = copy_fixture("mistral", std::string("cfg-") + c.tag);
    edit_json(dir + "/config.json", c.edit);
    SCOPED_TRACE(c.tag);
    expect_failure(dir, c.phrase);
  }
}

TEST(ConvertErrors, CheckpointProblemsAreNamed) {
  {
    const std::string dir = copy_fixture("mistral", "missing-tensor");
    rewrite_safetensors(dir, [](auto& t) { t.erase("model.layers.1.mlp.up_proj.weight"); });
    expect_failure(dir, "no tensor 'model.layers.1.mlp.up_proj.weight'");
  }
  {
    const std::string dir = copy_fixture("mistral", "nan");
    rewrite_safetensors(dir, [](auto& t) { t["model.layers.0.self_attn.q_proj.weight"].second[5] = NAN; });
    expect_failure(dir, "checkpoint tensor 'model.layers.0.self_attn.q_proj.weight' (for 'layers.0.attn_q') has a "
                        "non-finite value (nan) at element 5; kvant refuses to convert NaN or infinite weights");
  }
  {
    const std::string dir = copy_fixture("mistral", "inf");
    rewrite_safetensors(dir, [](auto& t) {
      t["model.norm.weight"].second[7] = INFINITY;
      t["model.norm.weight"].second[9] = NAN;  // only the first is named
    });
    expect_failure(dir, "checkpoint tensor 'model.norm.weight' (for 'output_norm') has a non-finite value (inf) at element 7");
  }
  {
    // A transposed source (GPT-2's Conv1D): the index is the source's, row-major.
    const std::string dir = copy_fixture("gpt2", "inf-transposed");
    rewrite_safetensors(dir, [](auto& t) { t.at("transformer.h.1.attn.c_attn.weight").second.at(1000) = -INFINITY; });
    expect_failure(dir, "checkpoint tensor 'transformer.h.1.attn.c_attn.weight' (for 'layers.1.attn_q') has a non-finite value "
                        "(-inf) at element 1000");
  }
  {
    // An F16 source (the llama fixture's): a NaN bit pattern in element 3 of the embeddings.
    const std::string dir = copy_fixture("llama", "nan-f16");
    auto ckpt = convert::Checkpoint::open_dir(dir);
    ASSERT_TRUE(ckpt);
    const convert::SourceTensor* t = ckpt.value()->find("model.embed_tokens.weight");
    ASSERT_EQ(t->type, convert::SourceType::f16);
    const uint64_t at = t->begin + 3 * 2;
    ckpt = Status::ok();
    auto bytes = test::read_file(dir + "/model.safetensors");
    bytes[at] = 0x00;
    bytes[at + 1] = 0x7e;
    test::write_file(dir + "/model.safetensors", bytes);
    expect_failure(dir, "checkpoint tensor 'model.embed_tokens.weight' (for 'token_embd') has a non-finite value (nan) "
                        "at element 3");
  }
  {
    const std::string dir = copy_fixture("mistral", "f16-range");
    rewrite_safetensors(dir, [](auto& t) { t["model.layers.0.mlp.down_proj.weight"].second[9] = 1e6f; });
    expect_failure(dir, "outside the f16 range");
  }
  {
    const std::string dir = copy_fixture("mistral", "truncated-st");
    const auto bytes = test::read_file(dir + "/model.safetensors");
    test::write_file(dir + "/model.safetensors", std::vector<uint8_t>(bytes.begin(), bytes.end() - 100));
    expect_failure(dir, "extends past the end");
  }
  {
    const std::string dir = copy_fixture("mistral", "bad-header");
    std::vector<uint8_t> bytes = test::read_file(dir + "/model.safetensors");
    const uint64_t huge = 1ull << 40;
    std::memcpy(bytes.data(), &huge, 8);
    test::write_file(dir + "/model.safetensors", bytes);
    expect_failure(dir, "exceeds the 100 MB limit");
  }
}

TEST(ConvertErrors, TokenizerProblemsAreNamed) {
  {
    const std::string dir = copy_fixture("gpt2", "unknown-merge");
    edit_json(dir + "/tokenizer.json", [](json& j) { j["model"]["merges"][3] = json::array({"Ġ", "no-such-token"}); });
    expect_failure(dir, "names unknown token 'no-such-token'");
  }
  {
    const std::string dir = copy_fixture("gpt2", "merge-result");
    edit_json(dir + "/tokenizer.json", [](json& j) {
      const std::string first = j["model"]["merges"][0].is_string() ? j["model"]["merges"][0].get<std::string>()
                                                                     : j["model"]["merges"][0][0].get<std::string>() + " " +
                                                                           j["model"]["merges"][0][1].get<std::string>();
      const std::string merged = first.substr(0, first.find(' ')) + first.substr(first.find(' ') + 1);
      j["model"]["vocab"].erase(merged);
    });
    expect_failure(dir, "which is not in the vocab");
  }
  {
    const std::string dir = copy_fixture("gpt2", "duplicate-id");
    edit_json(dir + "/tokenizer.json", [](json& j) { j["model"]["vocab"]["a-new-token"] = 7; });
    expect_failure(dir, "to id 7");
  }
  {
    const std::string dir = copy_fixture("gpt2", "absurd-id");
    edit_json(dir + "/tokenizer.json", [](json& j) { j["model"]["vocab"]["a-new-token"] = 1000000000000ll; });
    expect_failure(dir, "vocab entry 'a-new-token' has invalid id 1000000000000");
  }
  {
    const std::string dir = copy_fixture("gpt2", "unigram");
    edit_json(dir + "/tokenizer.json", [](json& j) { j["model"]["type"] = "Unigram"; });
    expect_failure(dir, "tokenizer model 'Unigram' is not supported");
  }
  {
    const std::string dir = copy_fixture("gpt2", "no-tokenizer");
    fs::remove(dir + "/tokenizer.json");
    expect_failure(dir, "no tokenizer.json");
  }
  {
    const std::string dir = copy_fixture("gpt2", "big-vocab");
    edit_json(dir + "/config.json", [](json& j) { j["vocab_size"] = 100; });
    expect_failure(dir, "vocab_size");
  }
}

TEST(ConvertCli, ErrorsAndVerify) {
  const std::string bin = test::bin_dir();
  auto r = test::run_command(bin + "/kvant-convert " + test::temp_dir() + "/nope -o " + test::temp_dir() + "/x.kvant");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("does not exist"), std::string::npos) << r.output;
  EXPECT_FALSE(test::file_exists(test::temp_dir() + "/x.kvant"));

  const std::string file = test::temp_dir() + "/cli-gpt2.kvant";
  r = test::run_command(bin + "/kvant-convert " + test::fixture_dir("gpt2") + " -o " + file + " --dtype q8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("bits per weight"), std::string::npos);
  r = test::run_command(bin + "/kvant-inspect " + file + " --verify --tensors");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("verify:        OK"), std::string::npos);
  EXPECT_NE(r.output.find("KV cache per token"), std::string::npos);

  // Flip one byte inside one tensor: --verify names it and fails.
  auto f = KvantFile::open(file);
  const TensorInfo* t = f.value()->find_tensor("layers.1.ffn_up");
  const uint64_t pos = f.value()->data_offset() + t->offset + t->size / 2;
  f = Status::ok();
  auto bytes = test::read_file(file);
  bytes[pos] ^= 0x04;
  const std::string flipped = test::temp_dir() + "/flipped.kvant";
  test::write_file(flipped, bytes);
  r = test::run_command(bin + "/kvant-inspect " + flipped + " --verify");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("checksum mismatch in tensor 'layers.1.ffn_up'"), std::string::npos) << r.output;

  // Truncate: loading fails with a clear message.
  bytes.resize(bytes.size() - 1000);
  const std::string truncated = test::temp_dir() + "/truncated.kvant";
  test::write_file(truncated, bytes);
  r = test::run_command(bin + "/kvant-inspect " + truncated);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("truncated"), std::string::npos) << r.output;
}

TEST(Synthetic, ShapesMatchTheirNames) {
  auto c = convert::synthetic_shape("llama-1b");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->dim, 2048u);
  EXPECT_EQ(c->n_layers, 16u);
  EXPECT_EQ(c->ffn_dim, 8192u);
  EXPECT_EQ(c->n_heads, 32u);
  EXPECT_EQ(c->n_kv_heads, 8u);
  EXPECT_EQ(c->vocab_size, 32000u);
  auto c7 = convert::synthetic_shape("llama2-7b");
  EXPECT_EQ(c7->dim, 4096u);
  EXPECT_EQ(c7->ffn_dim, 11008u);
  EXPECT_EQ(c7->n_kv_heads, 32u);
  EXPECT_FALSE(convert::synthetic_shape("llama-70b"));

  convert::ConvertOptions o;
  o.output_path = test::temp_dir() + "/synthetic-tiny.kvant";
  o.dtype = DType::q4;
  o.progress = false;
  o.quant_method = QuantMethod::absmax;
  ASSERT_TRUE(convert::write_synthetic("tiny", 3, o));
  auto f = KvantFile::open(o.output_path, true);
  ASSERT_TRUE(f) << f.status().message();
  EXPECT_EQ(f.value()->find_tensor("layers.1.ffn_down")->dtype, DType::q4);
  EXPECT_EQ(f.value()->find_tensor("output")->dtype, DType::q8);  // the head rule
  // Same seed, same bytes; different thread counts too.
  const auto first = test::read_file(o.output_path);
  o.threads = 1;
  ASSERT_TRUE(convert::write_synthetic("tiny", 3, o));
  EXPECT_EQ(test::read_file(o.output_path), first);
}

// ---- the default model ---------------------------------------------------------------

TEST(DefaultModel, ConvertsAtEveryTypeWithinItsBitsPerWeight) {
  const std::string dir = test::default_model_dir();
  if (dir.empty()) GTEST_SKIP() << "default model not fetched (run tools/fetch-default-model)";
  for (DType dtype : {DType::f16, DType::q8, DType::q4}) {
    convert::ConvertReport report;
    const std::string path = convert(dir, dtype, "smollm2", &report);
    auto f = KvantFile::open(path, /*verify_tensors=*/true);
    ASSERT_TRUE(f) << f.status().message();
    uint64_t bytes = 0, weights = 0;
    for (const auto& t : f.value()->tensors()) {
      if (t.n_dims != 2 || t.name == "token_embd") continue;  // the large layer matrices
      bytes += t.size;
      weights += t.n_elements();
      if (dtype != DType::f16) {
        EXPECT_EQ(t.dtype, dtype) << t.name;
      }
    }
    const double bpw = 8.0 * static_cast<double>(bytes) / static_cast<double>(weights);
    std::printf("SmolLM2 %s: %.3f bits per weight (layer matrices), file %.1f MB\n",
                std::string(dtype_name(dtype)).c_str(), bpw, static_cast<double>(f.value()->file_size()) / 1e6);
    if (dtype == DType::q8) {
      EXPECT_LE(bpw, 8.6);
    }
    if (dtype == DType::q4) {
      EXPECT_LE(bpw, 4.6);
    }
    for (const auto& tr : report.tensors) {
      if (tr.dtype == DType::q8) {
        EXPECT_LT(tr.relative_rms_error(), 0.01) << tr.name;
      }
      if (tr.dtype == DType::q4) {
        EXPECT_LT(tr.relative_rms_error(), 0.15) << tr.name;
      }
    }
    const auto tokens = f.value()->metadata().get_string_array("tokenizer.tokens");
    EXPECT_EQ(tokens->size(), 49152u);
    EXPECT_EQ((*tokens)[2], "<|im_end|>");
  }
}

}  // namespace
}  // namespace kvant
