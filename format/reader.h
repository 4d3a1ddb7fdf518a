// The .kvant reader: memory-maps a file, validates everything before use, and hands out
// zero-copy views of metadata and tensors. A malformed or hostile file yields a Status
// naming the problem; it never crashes the program. FORMAT.md lists every check.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "format/dtype.h"
#include "format/metadata.h"
#include "format/status.h"

namespace kvant {

struct TensorInfo {
  std::string_view name;
  DType dtype = DType::f32;
  uint32_t n_dims = 0;
  std::array<uint64_t, 4> shape{};  // shape[0..n_dims), outermost first; the last dimension is contiguous
  uint64_t offset = 0;              // from the start of the data region
  uint64_t size = 0;                // bytes
  uint64_t checksum = 0;            // XXH3-64 (seed 0) of the bytes

  uint64_t cols() const { return shape[n_dims - 1]; }
  uint64_t rows() const {  // product of all but the last dimension
    uint64_t r = 1;
    for (uint32_t i = 0; i + 1 < n_dims; ++i) r *= shape[i];
    return r;
  }
  uint64_t n_elements() const { return rows() * cols(); }
  std::string shape_string() const;  // "[49152, 576]"
};

class MappedFile;

class KvantFile {
 public:
  // Maps and validates the preamble, header and tensor directory. Tensor checksums
  // are not read here (see verify_tensor); pass verify_tensors to check them all.
  static Result<std::unique_ptr<KvantFile>> open(const std::string& path, bool verify_tensors = false);
  // Validates a file image already in memory (tests, fuzzing). The bytes are borrowed
  // and must outlive the returned object.
  static Result<std::unique_ptr<KvantFile>> from_memory(std::span<const uint8_t> bytes);

  ~KvantFile();
  KvantFile(const KvantFile&) = delete;
  KvantFile& operator=(const KvantFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return bytes_.size(); }
  uint32_t version_major() const { return version_major_; }
  uint32_t version_minor() const { return version_minor_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t header_size() const { return header_size_; }
  uint64_t data_offset() const { return data_offset_; }
  // The header's XXH3-64: identifies the model (saved sessions record it).
  uint64_t header_checksum() const { return header_checksum_; }

  const Metadata& metadata() const { return metadata_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;

  // The tensor's bytes inside the mapping (aligned to alignment()).
  std::span<const uint8_t> data(const TensorInfo& t) const {
    return bytes_.subspan(data_offset_ + t.offset, t.size);
  }

  // Recomputes the tensor's XXH3-64 and compares it with the stored checksum.
  bool verify_tensor(const TensorInfo& t) const;
  // Checks every tensor (in parallel); returns the names of those that fail.
  std::vector<std::string_view> verify_all() const;

 private:
  KvantFile() = default;
  Status parse();

  std::string path_ = "<memory>";
  std::unique_ptr<MappedFile> mapping_;
  std::span<const uint8_t> bytes_;
  uint32_t version_major_ = 0, version_minor_ = 0, alignment_ = 0;
  uint64_t header_size_ = 0, data_offset_ = 0, data_size_ = 0, header_checksum_ = 0;
  Metadata metadata_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string_view, size_t> tensor_index_;
};

}  // namespace kvant
