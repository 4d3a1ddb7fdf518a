#include "format/reader.h"

#include <omp.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "format/mapped_file.h"
#include "format/spec.h"
#include "format/utf8.h"

namespace kvant {

namespace {

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <class... Args>
Status bad(fmt::format_string<Args...> f, Args&&... args) {
  return Status(ErrorCode::format, fmt::format(f, std::forward<Args>(args)...));
}

// Bounds-checked reads from the header. Every read names what it was reading when it
// runs past the end, so a truncated or lying header gives a precise message.
class Cursor {
 public:
  Cursor(const uint8_t* data, uint64_t size) : data_(data), size_(size) {}
  uint64_t remaining() const { return size_ - pos_; }
  uint64_t pos() const { return pos_; }
  const uint8_t* here() const { return data_ + pos_; }

  Status need(uint64_t n, std::string_view what) const {
    if (n > remaining())
      return bad("header ends inside {} (needs {} bytes at header offset {}, {} left)", what, n, pos_, remaining());
    return Status::ok();
  }
  template <class T>
  Result<T> read(std::string_view what) {
    KVANT_TRY(need(sizeof(T), what));
    T v = load<T>(data_ + pos_);
    pos_ += sizeof(T);
    return v;
  }
  Result<std::string_view> read_string(std::string_view what, uint32_t max_len) {
    KVANT_ASSIGN_OR_RETURN(const uint32_t len, read<uint32_t>(what));
    if (len > max_len) return bad("{} is {} bytes long, more than the limit of {}", what, len, max_len);
    KVANT_TRY(need(len, what));
    std::string_view s(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return s;
  }
  Status skip(uint64_t n, std::string_view what) {
    KVANT_TRY(need(n, what));
    pos_ += n;
    return Status::ok();
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

bool valid_key(std::string_view key) {
  if (key.empty()) return false;
  return std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
  });
}

uint64_t scalar_size(ValueType t) {
  switch (t) {
    case ValueType::boolean: return 1;
    case ValueType::u32: case ValueType::i32: case ValueType::f32: return 4;
    case ValueType::u64: case ValueType::i64: case ValueType::f64: return 8;
    default: return 0;
  }
}

bool known_value_type(uint32_t t) { return t >= 1 && t <= 9; }

// Parses one value of type `type` at the cursor into `entry` (data/size/count).
Status read_value(Cursor& cur, ValueType type, MetaEntry& entry) {
  const std::string what = fmt::format("the value of metadata key '{}'", entry.key);
  if (type == ValueType::string) {
    KVANT_ASSIGN_OR_RETURN(const std::string_view s, cur.read_string(what, UINT32_MAX));
    if (!is_valid_utf8(s)) return bad("metadata key '{}': string value is not valid UTF-8", entry.key);
    entry.data = reinterpret_cast<const uint8_t*>(s.data());
    entry.size = s.size();
    return Status::ok();
  }
  if (type == ValueType::array) {
    KVANT_ASSIGN_OR_RETURN(const uint32_t et, cur.read<uint32_t>(what));
    if (!known_value_type(et) || et == static_cast<uint32_t>(ValueType::array))
      return bad("metadata key '{}': unknown array element type {}", entry.key, et);
    entry.element_type = static_cast<ValueType>(et);
    KVANT_ASSIGN_OR_RETURN(entry.count, cur.read<uint64_t>(what));
    entry.data = cur.here();
    const uint64_t start = cur.pos();
    if (entry.element_type == ValueType::string) {
      // Each element takes at least its 4-byte length: bound the count before looping.
      if (entry.count > cur.remaining() / 4)
        return bad("metadata key '{}': array claims {} strings, more than the header can hold", entry.key, entry.count);
      for (uint64_t i = 0; i < entry.count; ++i) {
        KVANT_ASSIGN_OR_RETURN(const std::string_view s, cur.read_string(what, UINT32_MAX));
        if (!is_valid_utf8(s))
          return bad("metadata key '{}': string element {} is not valid UTF-8", entry.key, i);
      }
    } else {
      const uint64_t elem = scalar_size(entry.element_type);
      if (entry.count > cur.remaining() / elem)
        return bad("metadata key '{}': array claims {} elements, more than the header can hold", entry.key,
                   entry.count);
      KVANT_TRY(cur.skip(entry.count * elem, what));
      if (entry.element_type == ValueType::boolean)
        for (uint64_t i = 0; i < entry.count; ++i)
          if (entry.data[i] > 1) return bad("metadata key '{}': bool element {} is not 0 or 1", entry.key, i);
    }
    entry.size = cur.pos() - start;
    return Status::ok();
  }
  entry.data = cur.here();
  entry.size = scalar_size(type);
  KVANT_TRY(cur.skip(entry.size, what));
  if (type == ValueType::boolean && entry.data[0] > 1)
    return bad("metadata key '{}': bool value is {}, not 0 or 1", entry.key, entry.data[0]);
  return Status::ok();
}

}  // namespace

std::string TensorInfo::shape_string() const {
  std::string s = "[";
  for (uint32_t i = 0; i < n_dims; ++i) s += fmt::format("{}{}", i ? ", " : "", shape[i]);
  return s + "]";
}

KvantFile::~KvantFile() = default;

Result<std::unique_ptr<KvantFile>> KvantFile::open(const std::string& path, bool verify_tensors) {
  KVANT_ASSIGN_OR_RETURN(auto mapping, MappedFile::open(path));
  std::unique_ptr<KvantFile> file(new KvantFile());
  file->path_ = path;
  file->bytes_ = mapping->bytes();
  file->mapping_ = std::move(mapping);
  KVANT_TRY(file->parse().with_context(path));
  if (verify_tensors) {
    const auto failed = file->verify_all();
    if (!failed.empty())
      return Status::error(ErrorCode::checksum, "{}: checksum mismatch in tensor '{}'{}", path, failed.front(),
                           failed.size() > 1 ? fmt::format(" and {} more", failed.size() - 1) : "");
  }
  return file;
}

Result<std::unique_ptr<KvantFile>> KvantFile::from_memory(std::span<const uint8_t> bytes) {
  std::unique_ptr<KvantFile> file(new KvantFile());
  file->bytes_ = bytes;
  KVANT_TRY(file->parse());
  return file;
}

const TensorInfo* KvantFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

bool KvantFile::verify_tensor(const TensorInfo& t) const {
  const auto bytes = data(t);
  return XXH3_64bits(bytes.data(), bytes.size()) == t.checksum;
}

std::vector<std::string_view> KvantFile::verify_all() const {
  std::vector<char> ok(tensors_.size(), 1);
  const auto n = static_cast<int64_t>(tensors_.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) ok[i] = verify_tensor(tensors_[i]) ? 1 : 0;
  std::vector<std::string_view> failed;
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (!ok[i]) failed.push_back(tensors_[i].name);
  return failed;
}

Status KvantFile::parse() {
  const uint8_t* p = bytes_.data();
  const uint64_t file_size = bytes_.size();

  // Preamble.
  if (file_size < spec::kPreambleSize)
    return bad("file is {} bytes, shorter than the {}-byte preamble (not a kvant file, or truncated)", file_size,
               spec::kPreambleSize);
  if (std::memcmp(p, spec::kMagic, sizeof(spec::kMagic)) != 0) return bad("bad magic: not a kvant file");
  version_major_ = load<uint32_t>(p + spec::kOffVersionMajor);
  version_minor_ = load<uint32_t>(p + spec::kOffVersionMinor);
  if (version_major_ > spec::kVersionMajor)
    return Status::error(ErrorCode::unsupported,
                         "file format version {}.{} is newer than this reader (version {}.{}); upgrade kvant",
                         version_major_, version_minor_, spec::kVersionMajor, spec::kVersionMinor);
  if (version_major_ != spec::kVersionMajor)
    return Status::error(ErrorCode::unsupported, "file format version {}.{} is not supported (this reader: {}.x)",
                         version_major_, version_minor_, spec::kVersionMajor);
  if (XXH3_64bits(p, spec::kOffPreambleChecksum) != load<uint64_t>(p + spec::kOffPreambleChecksum))
    return Status::error(ErrorCode::checksum, "preamble checksum mismatch: the first 64 bytes are corrupted");
  header_size_ = load<uint64_t>(p + spec::kOffHeaderSize);
  const auto header_checksum = load<uint64_t>(p + spec::kOffHeaderChecksum);
  header_checksum_ = header_checksum;
  data_offset_ = load<uint64_t>(p + spec::kOffDataOffset);
  data_size_ = load<uint64_t>(p + spec::kOffDataSize);
  alignment_ = load<uint32_t>(p + spec::kOffAlignment);
  const auto flags = load<uint32_t>(p + spec::kOffFlags);
  if (flags != 0) return Status::error(ErrorCode::unsupported, "unknown preamble flags 0x{:08x}", flags);
  if (alignment_ < spec::kMinAlignment || alignment_ > spec::kMaxAlignment || (alignment_ & (alignment_ - 1)) != 0)
    return bad("alignment {} is not a power of two in [{}, {}]", alignment_, spec::kMinAlignment,
               spec::kMaxAlignment);
  if (header_size_ == 0 || header_size_ > spec::kMaxHeaderSize)
    return bad("header size {} is outside (0, {}]", header_size_, spec::kMaxHeaderSize);
  if (header_size_ > file_size - spec::kPreambleSize)
    return bad("header extends past the end of the file (header of {} bytes at offset {}, file is {} bytes)",
               header_size_, spec::kPreambleSize, file_size);
  if (data_offset_ < spec::kPreambleSize + header_size_)
    return bad("data region at offset {} overlaps the header (which ends at {})", data_offset_,
               spec::kPreambleSize + header_size_);
  if (data_offset_ % alignment_ != 0) return bad("data offset {} is not aligned to {}", data_offset_, alignment_);
  uint64_t data_end = 0;
  if (__builtin_add_overflow(data_offset_, data_size_, &data_end))
    return bad("data region size {} overflows", data_size_);
  if (data_end > file_size)
    return bad("file is truncated: the data region ends at byte {} but the file has {} bytes", data_end, file_size);
  if (data_end < file_size) return bad("{} unexpected bytes after the data region", file_size - data_end);
  const uint8_t* header = p + spec::kPreambleSize;
  if (XXH3_64bits(header, header_size_) != header_checksum)
    return Status::error(ErrorCode::checksum, "header checksum mismatch: the header is corrupted");

  Cursor cur(header, header_size_);

  // Metadata.
  KVANT_ASSIGN_OR_RETURN(const uint64_t n_meta, cur.read<uint64_t>("the metadata count"));
  if (n_meta > cur.remaining() / 9)  // key length (4) + at least 1 byte of key + type (4)
    return bad("metadata count {} is more than the header can hold", n_meta);
  for (uint64_t i = 0; i < n_meta; ++i) {
    MetaEntry e;
    KVANT_ASSIGN_OR_RETURN(e.key, cur.read_string(fmt::format("metadata key {}", i), spec::kMaxKeyLength));
    if (!valid_key(e.key))
      return bad("metadata key {} is not made of [a-z0-9_.]: '{}'", i, is_valid_utf8(e.key) ? e.key : "<binary>");
    if (metadata_.has(e.key)) return bad("duplicate metadata key '{}'", e.key);
    KVANT_ASSIGN_OR_RETURN(const uint32_t type, cur.read<uint32_t>(fmt::format("the type of metadata key '{}'", e.key)));
    if (!known_value_type(type)) return bad("metadata key '{}' has unknown value type {}", e.key, type);
    e.type = static_cast<ValueType>(type);
    KVANT_TRY(read_value(cur, e.type, e));
    metadata_.add(e);
  }

  // Tensor directory.
  KVANT_ASSIGN_OR_RETURN(const uint64_t n_tensors, cur.read<uint64_t>("the tensor count"));
  if (n_tensors > cur.remaining() / 37)  // smallest entry: 4+1 name, 4 dtype, 4 n_dims, 8 dim, 3×8
    return bad("tensor count {} is more than the header can hold", n_tensors);
  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    KVANT_ASSIGN_OR_RETURN(t.name, cur.read_string(fmt::format("the name of tensor {}", i), spec::kMaxNameLength));
    if (t.name.empty()) return bad("tensor {} has an empty name", i);
    if (!is_valid_utf8(t.name)) return bad("the name of tensor {} is not valid UTF-8", i);
    if (t.name.find('\0') != std::string_view::npos) return bad("the name of tensor {} contains a NUL byte", i);
    if (tensor_index_.contains(t.name)) return bad("duplicate tensor name '{}'", t.name);
    const std::string what = fmt::format("the entry of tensor '{}'", t.name);
    KVANT_ASSIGN_OR_RETURN(const uint32_t dtype, cur.read<uint32_t>(what));
    const auto dt = dtype_from_u32(dtype);
    if (!dt) return bad("tensor '{}' has unknown dtype {}", t.name, dtype);
    t.dtype = *dt;
    KVANT_ASSIGN_OR_RETURN(t.n_dims, cur.read<uint32_t>(what));
    if (t.n_dims == 0 || t.n_dims > spec::kMaxDims)
      return bad("tensor '{}' has {} dimensions (1 to {} allowed)", t.name, t.n_dims, spec::kMaxDims);
    uint64_t rows = 1;
    bool overflow = false;
    for (uint32_t d = 0; d < t.n_dims; ++d) {
      KVANT_ASSIGN_OR_RETURN(t.shape[d], cur.read<uint64_t>(what));
      if (t.shape[d] == 0) return bad("tensor '{}' has a zero dimension", t.name);
      if (t.shape[d] > spec::kMaxDimension)
        return bad("tensor '{}' dimension {} is {}, above the limit of 2^40", t.name, d, t.shape[d]);
      if (d + 1 < t.n_dims) overflow |= __builtin_mul_overflow(rows, t.shape[d], &rows);
    }
    KVANT_ASSIGN_OR_RETURN(t.offset, cur.read<uint64_t>(what));
    KVANT_ASSIGN_OR_RETURN(t.size, cur.read<uint64_t>(what));
    KVANT_ASSIGN_OR_RETURN(t.checksum, cur.read<uint64_t>(what));
    const auto expected = overflow ? std::nullopt : tensor_bytes(t.dtype, rows, t.cols());
    if (!expected) {
      if (!overflow && dtype_is_quantized(t.dtype) && t.cols() % kQuantGroup != 0)
        return bad("tensor '{}' of dtype {} has a last dimension of {}, not a multiple of {}", t.name,
                   dtype_name(t.dtype), t.cols(), kQuantGroup);
      return bad("tensor '{}' shape {} overflows: its element or byte count does not fit in 64 bits", t.name,
                 t.shape_string());
    }
    if (*expected != t.size)
      return bad("tensor '{}' stores {} bytes but shape {} of dtype {} needs {}", t.name, t.size, t.shape_string(),
                 dtype_name(t.dtype), *expected);
    if (t.offset % alignment_ != 0)
      return bad("tensor '{}' offset {} is not aligned to {}", t.name, t.offset, alignment_);
    if (t.offset > data_size_ || t.size > data_size_ - t.offset)
      return bad("tensor '{}' ({} bytes at offset {} of the data region) extends past its end ({} bytes)", t.name,
                 t.size, t.offset, data_size_);
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(t);
  }
  if (cur.remaining() != 0) return bad("{} unexpected bytes at the end of the header", cur.remaining());

  // No two tensors share bytes.
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(tensors_.size());
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i - 1]->offset + by_offset[i - 1]->size > by_offset[i]->offset)
      return bad("tensors '{}' and '{}' overlap", by_offset[i - 1]->name, by_offset[i]->name);
  return Status::ok();
}

}  // namespace kvant
