#include "format/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kvant {

Result<std::unique_ptr<MappedFile>> MappedFile::open(const std::string& path) {
  if (path.empty()) return Status::error(ErrorCode::invalid_argument, "empty file path");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::error(ErrorCode::io, "cannot open '{}': {}", path, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Status::error(ErrorCode::io, "cannot stat '{}': {}", path, std::strerror(err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return Status::error(ErrorCode::io, "'{}' is a directory, not a file", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::error(ErrorCode::io, "'{}' is not a regular file", path);
  }
  if (st.st_size == 0) {
    ::close(fd);
    return Status::error(ErrorCode::format, "'{}' is empty", path);
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  void* p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) return Status::error(ErrorCode::io, "cannot map '{}': {}", path, std::strerror(err));
  return std::unique_ptr<MappedFile>(new MappedFile(static_cast<const uint8_t*>(p), size));
}

MappedFile::~MappedFile() { munmap(const_cast<uint8_t*>(data_), size_); }

}  // namespace kvant
