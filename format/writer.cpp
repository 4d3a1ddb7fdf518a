#include "format/writer.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "format/utf8.h"

namespace kvant {

namespace {

// Buffer holding the temporary path for signal handlers (see active_temp_path()).
char g_active_temp_path[4096] = {0};

constexpr size_t kWriteBufferSize = 8u << 20;

template <class T>
void put(std::vector<uint8_t>& out, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}

void put_string(std::vector<uint8_t>& out, std::string_view s) {
  put<uint32_t>(out, static_cast<uint32_t>(s.size()));
  out.insert(out.end(), s.begin(), s.end());
}

template <class T>
constexpr ValueType value_type_of() {
  if constexpr (std::is_same_v<T, bool>) return ValueType::boolean;
  else if constexpr (std::is_same_v<T, uint32_t>) return ValueType::u32;
  else if constexpr (std::is_same_v<T, int32_t>) return ValueType::i32;
  else if constexpr (std::is_same_v<T, uint64_t>) return ValueType::u64;
  else if constexpr (std::is_same_v<T, int64_t>) return ValueType::i64;
  else if constexpr (std::is_same_v<T, float>) return ValueType::f32;
  else if constexpr (std::is_same_v<T, double>) return ValueType::f64;
  else return ValueType::string;
}

template <class T>
void put_scalar(std::vector<uint8_t>& out, const T& v) {
  if constexpr (std::is_same_v<T, bool>) put<uint8_t>(out, v ? 1 : 0);
  else if constexpr (std::is_same_v<T, std::string>) put_string(out, v);
  else put<T>(out, v);
}

void put_value(std::vector<uint8_t>& out, const Value& value) {
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (requires { typename T::value_type; } && !std::is_same_v<T, std::string>) {
          using E = typename T::value_type;
          put<uint32_t>(out, static_cast<uint32_t>(ValueType::array));
          put<uint32_t>(out, static_cast<uint32_t>(value_type_of<E>()));
          put<uint64_t>(out, v.size());
          for (const auto& e : v) put_scalar(out, e);
        } else {
          put<uint32_t>(out, static_cast<uint32_t>(value_type_of<T>()));
          put_scalar(out, v);
        }
      },
      value);
}

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

Status io_error(std::string_view what, const std::string& path) {
  return Status::error(ErrorCode::io, "{} '{}': {}", what, path, std::strerror(errno));
}

}  // namespace

struct KvantWriter::HashState {
  XXH3_state_t state;
  std::vector<uint8_t> buffer;
};

const char* active_temp_path() { return g_active_temp_path; }

KvantWriter::KvantWriter(std::string path, uint32_t alignment)
    : path_(std::move(path)), alignment_(alignment), hash_(std::make_unique<HashState>()) {}

KvantWriter::~KvantWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_path_.empty()) {
    ::unlink(temp_path_.c_str());
    g_active_temp_path[0] = '\0';
  }
}

void KvantWriter::set(std::string key, Value value) {
  for (auto& [k, v] : metadata_)
    if (k == key) {
      v = std::move(value);
      return;
    }
  metadata_.emplace_back(std::move(key), std::move(value));
}

Status KvantWriter::add_tensor(std::string name, DType dtype, std::vector<uint64_t> shape) {
  if (fd_ >= 0) return Status::error(ErrorCode::internal, "add_tensor('{}') after begin()", name);
  if (name.empty() || name.size() > spec::kMaxNameLength || !is_valid_utf8(name))
    return Status::error(ErrorCode::invalid_argument, "invalid tensor name '{}'", name);
  for (const auto& t : tensors_)
    if (t.name == name) return Status::error(ErrorCode::invalid_argument, "duplicate tensor name '{}'", name);
  if (shape.empty() || shape.size() > spec::kMaxDims)
    return Status::error(ErrorCode::invalid_argument, "tensor '{}' has {} dimensions", name, shape.size());
  uint64_t rows = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0 || shape[i] > spec::kMaxDimension)
      return Status::error(ErrorCode::invalid_argument, "tensor '{}' dimension {} is {}", name, i, shape[i]);
    if (i + 1 < shape.size() && __builtin_mul_overflow(rows, shape[i], &rows))
      return Status::error(ErrorCode::invalid_argument, "tensor '{}' is too large", name);
  }
  const auto size = tensor_bytes(dtype, rows, shape.back());
  if (!size)
    return Status::error(ErrorCode::invalid_argument, "tensor '{}' cannot be stored as {} (last dimension {})", name,
                         dtype_name(dtype), shape.back());
  tensors_.push_back({std::move(name), dtype, std::move(shape), 0, *size, 0});
  return Status::ok();
}

std::vector<uint8_t> KvantWriter::encode_header() const {
  std::vector<uint8_t> h;
  put<uint64_t>(h, metadata_.size());
  for (const auto& [key, value] : metadata_) {
    put_string(h, key);
    put_value(h, value);
  }
  put<uint64_t>(h, tensors_.size());
  for (const auto& t : tensors_) {
    put_string(h, t.name);
    put<uint32_t>(h, static_cast<uint32_t>(t.dtype));
    put<uint32_t>(h, static_cast<uint32_t>(t.shape.size()));
    for (uint64_t d : t.shape) put<uint64_t>(h, d);
    put<uint64_t>(h, t.offset);
    put<uint64_t>(h, t.size);
    put<uint64_t>(h, t.checksum);
  }
  return h;
}

uint64_t KvantWriter::file_size() const { return data_offset_ + data_size_; }

Status KvantWriter::begin() {
  if (fd_ >= 0) return Status::error(ErrorCode::internal, "begin() called twice");
  for (const auto& [key, value] : metadata_) {
    const bool ok = !key.empty() && key.size() <= spec::kMaxKeyLength &&
                    key.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_.") == std::string::npos;
    if (!ok) return Status::error(ErrorCode::invalid_argument, "invalid metadata key '{}'", key);
  }
  uint64_t offset = 0;
  for (auto& t : tensors_) {
    t.offset = offset;
    offset = align_up(offset + t.size, alignment_);
  }
  data_size_ = tensors_.empty() ? 0 : tensors_.back().offset + tensors_.back().size;
  header_size_ = encode_header().size();
  data_offset_ = align_up(spec::kPreambleSize + header_size_, alignment_);

  temp_path_ = fmt::format("{}.tmp.{}", path_, ::getpid());
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    Status s = io_error("cannot create", temp_path_);
    temp_path_.clear();
    return s;
  }
  std::snprintf(g_active_temp_path, sizeof(g_active_temp_path), "%s", temp_path_.c_str());
  hash_->buffer.reserve(kWriteBufferSize);
  XXH3_64bits_reset(&hash_->state);
  position_ = 0;
  current_ = 0;
  current_written_ = 0;
  // Preamble and header are rewritten with their checksums by commit().
  KVANT_TRY(pad_to(data_offset_));
  return Status::ok();
}

Status KvantWriter::write_all(const uint8_t* data, uint64_t n) {
  auto& buf = hash_->buffer;
  while (n > 0) {
    const uint64_t take = std::min<uint64_t>(n, kWriteBufferSize - buf.size());
    buf.insert(buf.end(), data, data + take);
    data += take;
    n -= take;
    position_ += take;
    if (buf.size() == kWriteBufferSize || (n == 0 && position_ == file_size())) {
      const uint8_t* p = buf.data();
      size_t left = buf.size();
      while (left > 0) {
        const ssize_t w = ::write(fd_, p, left);
        if (w < 0) {
          if (errno == EINTR) continue;
          return io_error("cannot write", temp_path_);
        }
        p += w;
        left -= static_cast<size_t>(w);
      }
      buf.clear();
    }
  }
  return Status::ok();
}

Status KvantWriter::pad_to(uint64_t absolute_offset) {
  static const uint8_t zeros[4096] = {};
  while (position_ < absolute_offset) {
    const uint64_t n = std::min<uint64_t>(sizeof(zeros), absolute_offset - position_);
    KVANT_TRY(write_all(zeros, n));
  }
  return Status::ok();
}

Status KvantWriter::finish_tensor() {
  tensors_[current_].checksum = XXH3_64bits_digest(&hash_->state);
  XXH3_64bits_reset(&hash_->state);
  ++current_;
  current_written_ = 0;
  if (current_ < tensors_.size()) KVANT_TRY(pad_to(data_offset_ + tensors_[current_].offset));
  return Status::ok();
}

Status KvantWriter::write(std::span<const uint8_t> bytes) {
  if (fd_ < 0) return Status::error(ErrorCode::internal, "write() before begin()");
  if (current_ >= tensors_.size())
    return Status::error(ErrorCode::internal, "write() of {} bytes after the last tensor", bytes.size());
  Tensor& t = tensors_[current_];
  if (bytes.size() > t.size - current_written_)
    return Status::error(ErrorCode::internal, "write() of {} bytes overruns tensor '{}' ({} of {} written)",
                         bytes.size(), t.name, current_written_, t.size);
  XXH3_64bits_update(&hash_->state, bytes.data(), bytes.size());
  KVANT_TRY(write_all(bytes.data(), bytes.size()));
  current_written_ += bytes.size();
  if (current_written_ == t.size) KVANT_TRY(finish_tensor());
  return Status::ok();
}

Status KvantWriter::commit() {
  if (fd_ < 0) return Status::error(ErrorCode::internal, "commit() before begin()");
  if (current_ != tensors_.size())
    return Status::error(ErrorCode::internal, "commit() with tensor '{}' incomplete", tensors_[current_].name);
  KVANT_TRY(pad_to(file_size()));  // flushes the buffer (no-op when already at the end)
  if (!hash_->buffer.empty()) return Status::error(ErrorCode::internal, "unflushed output");

  const std::vector<uint8_t> header = encode_header();
  if (header.size() != header_size_) return Status::error(ErrorCode::internal, "header size changed");
  uint8_t preamble[spec::kPreambleSize] = {};
  std::memcpy(preamble, spec::kMagic, sizeof(spec::kMagic));
  auto store = [&](uint64_t off, auto v) { std::memcpy(preamble + off, &v, sizeof(v)); };
  store(spec::kOffVersionMajor, spec::kVersionMajor);
  store(spec::kOffVersionMinor, spec::kVersionMinor);
  store(spec::kOffHeaderSize, header_size_);
  store(spec::kOffHeaderChecksum, static_cast<uint64_t>(XXH3_64bits(header.data(), header.size())));
  store(spec::kOffDataOffset, data_offset_);
  store(spec::kOffDataSize, data_size_);
  store(spec::kOffAlignment, alignment_);
  store(spec::kOffFlags, uint32_t{0});
  store(spec::kOffPreambleChecksum, static_cast<uint64_t>(XXH3_64bits(preamble, spec::kOffPreambleChecksum)));

  if (::pwrite(fd_, preamble, sizeof(preamble), 0) != static_cast<ssize_t>(sizeof(preamble)) ||
      ::pwrite(fd_, header.data(), header.size(), spec::kPreambleSize) != static_cast<ssize_t>(header.size()))
    return io_error("cannot write header of", temp_path_);
  if (::fsync(fd_) != 0) return io_error("cannot sync", temp_path_);
  if (::close(fd_) != 0) {
    fd_ = -1;
    return io_error("cannot close", temp_path_);
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) return io_error("cannot rename temporary file to", path_);
  committed_ = true;
  g_active_temp_path[0] = '\0';
  return Status::ok();
}

}  // namespace kvant
