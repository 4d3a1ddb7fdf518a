// The .kvant writer. Usage: set metadata and declare every tensor, begin(), then write
// each tensor's bytes in declaration order (in as many pieces as convenient), then
// commit(). Output goes to a temporary file beside the destination that is renamed
// over it only by commit(); a writer destroyed before commit() removes it, so an
// error or interruption never leaves a partial file under the final name.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "format/dtype.h"
#include "format/metadata.h"
#include "format/spec.h"
#include "format/status.h"

namespace kvant {

class KvantWriter {
 public:
  explicit KvantWriter(std::string path, uint32_t alignment = spec::kDefaultAlignment);
  ~KvantWriter();
  KvantWriter(const KvantWriter&) = delete;
  KvantWriter& operator=(const KvantWriter&) = delete;

  // Metadata; setting a key twice replaces the value. Keys are [a-z0-9_.].
  void set(std::string key, Value value);
  Status add_tensor(std::string name, DType dtype, std::vector<uint64_t> shape);

  Status begin();
  Status write(std::span<const uint8_t> bytes);  // next bytes of the current tensor
  Status commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  uint64_t file_size() const;  // valid after begin()
  size_t tensor_count() const { return tensors_.size(); }
  uint64_t tensor_size(size_t i) const { return tensors_[i].size; }

 private:
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<uint64_t> shape;
    uint64_t offset = 0, size = 0, checksum = 0;
  };
  struct HashState;

  std::vector<uint8_t> encode_header() const;
  Status write_all(const uint8_t* data, uint64_t n);
  Status pad_to(uint64_t absolute_offset);
  Status finish_tensor();

  std::string path_, temp_path_;
  uint32_t alignment_;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<Tensor> tensors_;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t header_size_ = 0, data_offset_ = 0, data_size_ = 0;
  uint64_t position_ = 0;      // absolute file position of the next write
  size_t current_ = 0;         // tensor being written
  uint64_t current_written_ = 0;
  std::unique_ptr<HashState> hash_;
};

// Path of the temporary file currently being written by any KvantWriter in this
// process (empty if none): a signal handler may unlink() it. Async-signal-safe read.
const char* active_temp_path();

}  // namespace kvant
