#include "convert/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

namespace kvant::convert {

using nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the safetensors spec's limit

Status bad(const std::string& file, std::string msg) {
  return Status(ErrorCode::format, fmt::format("{}: {}", file, msg));
}

struct TypeName {
  const char* name;
  std::optional<SourceType> type;
  size_t size;
};
// Every dtype the safetensors spec defines; the ones kvant cannot convert from are
// recognised so the error can say "unsupported" rather than "unknown".
constexpr TypeName kTypes[] = {
    {"F64", SourceType::f64, 8}, {"F32", SourceType::f32, 4},  {"F16", SourceType::f16, 2},
    {"BF16", SourceType::bf16, 2}, {"I64", std::nullopt, 8},   {"I32", std::nullopt, 4},
    {"I16", std::nullopt, 2},      {"I8", std::nullopt, 1},    {"U64", std::nullopt, 8},
    {"U32", std::nullopt, 4},      {"U16", std::nullopt, 2},   {"U8", std::nullopt, 1},
    {"BOOL", std::nullopt, 1},     {"F8_E4M3", std::nullopt, 1}, {"F8_E5M2", std::nullopt, 1},
};

Result<int> open_readable(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return Status::error(ErrorCode::io, "cannot open '{}': {}", path, std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return Status::error(ErrorCode::io, "'{}' is a directory, not a file", path);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::error(ErrorCode::io, "cannot open '{}': {}", path, std::strerror(errno));
  return fd;
}

Status pread_all(int fd, void* dst, uint64_t n, uint64_t offset, const std::string& path) {
  auto* p = static_cast<uint8_t*>(dst);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, std::min<uint64_t>(n, 1u << 30), static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Status::error(ErrorCode::io, "cannot read '{}': {}", path, std::strerror(errno));
    }
    if (r == 0) return Status::error(ErrorCode::io, "'{}' ended early (file truncated while reading?)", path);
    p += r;
    n -= static_cast<uint64_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return Status::ok();
}

}  // namespace

size_t source_type_size(SourceType t) {
  switch (t) {
    case SourceType::f64: return 8;
    case SourceType::f32: return 4;
    case SourceType::f16: case SourceType::bf16: return 2;
  }
  return 0;
}

const char* source_type_name(SourceType t) {
  switch (t) {
    case SourceType::f64: return "F64";
    case SourceType::f32: return "F32";
    case SourceType::f16: return "F16";
    case SourceType::bf16: return "BF16";
  }
  return "?";
}

uint64_t SourceTensor::n_elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

std::string SourceTensor::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", shape[i]);
  return s + "]";
}

Result<std::vector<SourceTensor>> parse_safetensors_header(std::string_view header, uint64_t data_size,
                                                           const std::string& file) {
  const json j = json::parse(header.begin(), header.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return bad(file, "safetensors header is not valid JSON");
  if (!j.is_object()) return bad(file, "safetensors header is not a JSON object");
  std::vector<SourceTensor> out;
  out.reserve(j.size());
  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") continue;
    const std::string what = fmt::format("tensor '{}'", name);
    if (!entry.is_object()) return bad(file, what + " is not a JSON object");
    const auto dt = entry.find("dtype");
    const auto sh = entry.find("shape");
    const auto off = entry.find("data_offsets");
    if (dt == entry.end() || !dt->is_string()) return bad(file, what + " has no string 'dtype'");
    if (sh == entry.end() || !sh->is_array()) return bad(file, what + " has no array 'shape'");
    if (off == entry.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      return bad(file, what + " has no 'data_offsets' pair of non-negative integers");
    const std::string dtype = dt->get<std::string>();
    const TypeName* tn = nullptr;
    for (const auto& t : kTypes)
      if (dtype == t.name) tn = &t;
    if (!tn) return bad(file, fmt::format("{} has unknown dtype '{}'", what, dtype));
    SourceTensor t;
    t.name = name;
    uint64_t n = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) return bad(file, what + " has a shape entry that is not a non-negative integer");
      const uint64_t v = d.get<uint64_t>();
      if (__builtin_mul_overflow(n, v, &n)) return bad(file, what + " has a shape whose element count overflows");
      t.shape.push_back(v);
    }
    const uint64_t begin = (*off)[0].get<uint64_t>(), end = (*off)[1].get<uint64_t>();
    if (begin > end) return bad(file, fmt::format("{} has data_offsets [{}, {}] in the wrong order", what, begin, end));
    if (end > data_size)
      return bad(file, fmt::format("{} data [{}, {}) extends past the end of the file's data ({} bytes)", what, begin,
                                   end, data_size));
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(n, tn->size, &bytes))
      return bad(file, what + " has a shape whose byte count overflows");
    if (bytes != end - begin)
      return bad(file, fmt::format("{} has dtype {} and shape {} ({} bytes) but data_offsets span {} bytes", what,
                                   dtype, t.shape_string(), bytes, end - begin));
    if (!tn->type)
      return Status::error(ErrorCode::unsupported, "{}: {} has dtype {}, which kvant cannot convert (F32, F16, BF16, F64)",
                           file, what, dtype);
    t.type = *tn->type;
    t.begin = begin;
    t.size = bytes;
    out.push_back(std::move(t));
  }
  // No two tensors share a byte. Each is compared with the one reaching furthest among
  // those before it, not only its neighbour: an empty tensor in between must not hide
  // an overlap. Empty tensors own no bytes.
  std::vector<const SourceTensor*> sorted;
  for (const auto& t : out)
    if (t.size > 0) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  const SourceTensor* furthest = nullptr;
  for (const SourceTensor* t : sorted) {
    if (furthest && furthest->begin + furthest->size > t->begin)
      return bad(file, fmt::format("tensors '{}' and '{}' overlap", furthest->name, t->name));
    if (!furthest || t->begin + t->size > furthest->begin + furthest->size) furthest = t;
  }
  return out;
}

Result<std::unordered_map<std::string, std::string>> parse_safetensors_index(std::string_view text,
                                                                              const std::string& file) {
  const json j = json::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded()) return bad(file, "not valid JSON");
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    return bad(file, "has no 'weight_map' object");
  std::unordered_map<std::string, std::string> map;
  for (const auto& [name, shard] : j["weight_map"].items()) {
    if (!shard.is_string()) return bad(file, fmt::format("weight_map entry '{}' is not a string", name));
    const std::string s = shard.get<std::string>();
    if (s.empty() || s.find('/') != std::string::npos || s.find('\\') != std::string::npos || s == "." || s == "..")
      return bad(file, fmt::format("weight_map entry '{}' names '{}', which is not a plain file name", name, s));
    map.emplace(name, s);
  }
  if (map.empty()) return bad(file, "weight_map is empty");
  return map;
}

Checkpoint::~Checkpoint() {
  for (int fd : fds_) ::close(fd);
}

Status Checkpoint::add_file(const std::string& path,
                            const std::unordered_map<std::string, std::string>* expect_from_index) {
  KVANT_ASSIGN_OR_RETURN(const int fd, open_readable(path));
  fds_.push_back(fd);
  paths_.push_back(path);
  struct stat st {};
  if (fstat(fd, &st) != 0) return Status::error(ErrorCode::io, "cannot stat '{}': {}", path, std::strerror(errno));
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8)
    return bad(path, fmt::format("file is {} bytes, too short for a safetensors header length", file_size));
  uint64_t header_len = 0;
  KVANT_TRY(pread_all(fd, &header_len, 8, 0, path));
  if (header_len > kMaxHeaderBytes)
    return bad(path, fmt::format("safetensors header length {} exceeds the 100 MB limit", header_len));
  if (header_len > file_size - 8)
    return bad(path, fmt::format("safetensors header ({} bytes) extends past the end of the file ({} bytes)",
                                 header_len, file_size));
  std::string header(header_len, '\0');
  KVANT_TRY(pread_all(fd, header.data(), header_len, 8, path));
  KVANT_ASSIGN_OR_RETURN(auto tensors, parse_safetensors_header(header, file_size - 8 - header_len, path));
  const size_t shard = paths_.size() - 1;
  const std::string base = std::filesystem::path(path).filename().string();
  for (auto& t : tensors) {
    if (expect_from_index) {
      const auto it = expect_from_index->find(t.name);
      if (it != expect_from_index->end() && it->second != base) continue;  // the index says another shard holds it
    }
    if (index_.contains(t.name)) return bad(path, fmt::format("tensor '{}' appears in two shards", t.name));
    t.begin += 8 + header_len;
    t.shard = shard;
    index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }
  return Status::ok();
}

Result<std::unique_ptr<Checkpoint>> Checkpoint::open_file(const std::string& path) {
  std::unique_ptr<Checkpoint> c(new Checkpoint());
  KVANT_TRY(c->add_file(path, nullptr));
  return c;
}

Result<std::unique_ptr<Checkpoint>> Checkpoint::open_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return Status::error(ErrorCode::io, "model directory '{}' does not exist", dir);
  if (!fs::is_directory(dir, ec)) return Status::error(ErrorCode::io, "'{}' is not a directory", dir);
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::unique_ptr<Checkpoint> c(new Checkpoint());
  if (fs::exists(single, ec)) {
    KVANT_TRY(c->add_file(single.string(), nullptr));
    return c;
  }
  if (!fs::exists(index, ec))
    return Status::error(ErrorCode::io, "'{}' has neither model.safetensors nor model.safetensors.index.json", dir);
  KVANT_ASSIGN_OR_RETURN(const int fd, open_readable(index.string()));
  struct stat st {};
  fstat(fd, &st);
  if (static_cast<uint64_t>(st.st_size) > kMaxHeaderBytes) {
    ::close(fd);
    return bad(index.string(), "index file is larger than 100 MB");
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  const Status read = pread_all(fd, text.data(), text.size(), 0, index.string());
  ::close(fd);
  KVANT_TRY(read);
  KVANT_ASSIGN_OR_RETURN(const auto map, parse_safetensors_index(text, index.string()));
  std::vector<std::string> shards;
  for (const auto& [name, shard] : map) shards.push_back(shard);
  std::sort(shards.begin(), shards.end());
  shards.erase(std::unique(shards.begin(), shards.end()), shards.end());
  for (const auto& shard : shards) KVANT_TRY(c->add_file((fs::path(dir) / shard).string(), &map));
  for (const auto& [name, shard] : map)
    if (!c->index_.contains(name))
      return bad(index.string(), fmt::format("tensor '{}' is listed in shard '{}' but that shard does not have it",
                                             name, shard));
  return c;
}

const SourceTensor* Checkpoint::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t n = 0;
  for (const auto& t : tensors_) n += t.size;
  return n;
}

Status Checkpoint::read(const SourceTensor& t, uint64_t offset, uint64_t n, void* dst) const {
  if (offset > t.size || n > t.size - offset)
    return Status::error(ErrorCode::internal, "read past the end of tensor '{}'", t.name);
  return pread_all(fds_[t.shard], dst, n, t.begin + offset, paths_[t.shard]);
}

void Checkpoint::prefetch(const SourceTensor& t, uint64_t offset, uint64_t n) const {
  if (offset >= t.size) return;
  n = std::min(n, t.size - offset);
  ::posix_fadvise(fds_[t.shard], static_cast<off_t>(t.begin + offset), static_cast<off_t>(n), POSIX_FADV_WILLNEED);
}

}  // namespace kvant::convert
