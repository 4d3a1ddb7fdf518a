// Reader for Hugging Face safetensors checkpoints: one model.safetensors, or shards
// listed by model.safetensors.index.json. Headers are validated as strictly as .kvant
// headers (bounds, overlaps, dtype/shape/size agreement); tensor bytes are read with
// pread into caller buffers, so memory stays bounded by what the caller asks for.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "format/status.h"

namespace kvant::convert {

enum class SourceType { f32, f16, bf16, f64 };

size_t source_type_size(SourceType t);
const char* source_type_name(SourceType t);

struct SourceTensor {
  std::string name;
  SourceType type = SourceType::f32;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // absolute byte offset in its file
  uint64_t size = 0;   // bytes
  size_t shard = 0;    // index into the checkpoint's files

  uint64_t n_elements() const;
  std::string shape_string() const;
};

// Parses and validates one safetensors header. `header` is the JSON text (after the
// 8-byte length), `data_size` the bytes that follow it in the file. Offsets in the
// result are absolute file offsets. Exposed for tests and fuzzing.
Result<std::vector<SourceTensor>> parse_safetensors_header(std::string_view header, uint64_t data_size,
                                                           const std::string& file_label);

// Parses a model.safetensors.index.json text: tensor name -> shard file name.
// Shard names must be plain file names (no directories), so an index cannot point
// outside the model directory.
Result<std::unordered_map<std::string, std::string>> parse_safetensors_index(std::string_view text,
                                                                              const std::string& file_label);

class Checkpoint {
 public:
  // Opens <dir>/model.safetensors, or the shards of <dir>/model.safetensors.index.json.
  static Result<std::unique_ptr<Checkpoint>> open_dir(const std::string& dir);
  // Opens one safetensors file.
  static Result<std::unique_ptr<Checkpoint>> open_file(const std::string& path);
  ~Checkpoint();

  const SourceTensor* find(const std::string& name) const;
  const std::vector<SourceTensor>& tensors() const { return tensors_; }
  uint64_t total_bytes() const;
  const std::vector<std::string>& files() const { return paths_; }

  // Reads `n` bytes starting `offset` bytes into the tensor.
  Status read(const SourceTensor& t, uint64_t offset, uint64_t n, void* dst) const;
  // Hints the kernel to start reading a byte range (readahead of the next chunk).
  void prefetch(const SourceTensor& t, uint64_t offset, uint64_t n) const;

 private:
  Checkpoint() = default;
  Status add_file(const std::string& path, const std::unordered_map<std::string, std::string>* expect_from_index);

  std::vector<std::string> paths_;
  std::vector<int> fds_;
  std::vector<SourceTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace kvant::convert
