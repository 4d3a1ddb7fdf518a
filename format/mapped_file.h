// Read-only memory mapping of a whole file (RAII).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "format/status.h"

namespace kvant {

class MappedFile {
 public:
  // Fails with a message naming the path for a missing, unreadable, empty file or a directory.
  static Result<std::unique_ptr<MappedFile>> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }

 private:
  MappedFile(const uint8_t* data, uint64_t size) : data_(data), size_(size) {}
  const uint8_t* data_;
  uint64_t size_;
};

}  // namespace kvant
