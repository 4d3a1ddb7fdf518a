// libFuzzer target: hostile safetensors checkpoints. The first byte picks the input:
//   0: a header's JSON text (the next 4 bytes give the data size that follows it),
//   1: a model.safetensors.index.json text,
//   2: a whole safetensors file, opened from a memfd as kvant-convert opens files, and
//      every tensor it accepts read back.
// Errors must be statuses; accepted tensors must lie inside the data and not overlap.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "convert/safetensors.h"

namespace {

using namespace kvant::convert;

void check_tensors(const std::vector<SourceTensor>& tensors, uint64_t begin, uint64_t end) {
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& t : tensors) {
    if (t.begin < begin || t.begin > end || t.size > end - t.begin) __builtin_trap();
    if (t.size != t.n_elements() * source_type_size(t.type)) __builtin_trap();
    if (t.size > 0) spans.emplace_back(t.begin, t.begin + t.size);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i - 1].second > spans[i].first) __builtin_trap();  // overlap accepted
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0] % 3;
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (mode == 0) {
    if (rest.size() < 4) return 0;
    uint32_t data_size;
    std::memcpy(&data_size, rest.data(), 4);
    auto r = parse_safetensors_header(rest.substr(4), data_size, "fuzz.safetensors");
    if (r) check_tensors(*r, 0, data_size);
    return 0;
  }
  if (mode == 1) {
    auto r = parse_safetensors_index(rest, "fuzz.index.json");
    if (r)
      for (const auto& [name, shard] : *r)
        if (shard.empty() || shard.find('/') != std::string::npos || shard == "..") __builtin_trap();
    return 0;
  }
  const int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
  if (fd < 0) return 0;
  if (write(fd, rest.data(), rest.size()) != static_cast<ssize_t>(rest.size())) {
    close(fd);
    return 0;
  }
  auto ckpt = Checkpoint::open_file("/proc/self/fd/" + std::to_string(fd));
  close(fd);
  if (!ckpt) return 0;
  check_tensors((*ckpt)->tensors(), 8, rest.size());
  std::vector<uint8_t> buf;
  for (const auto& t : (*ckpt)->tensors()) {
    buf.resize(t.size);
    if (!(*ckpt)->read(t, 0, t.size, buf.data())) __builtin_trap();  // inside the file: must read
  }
  return 0;
}
