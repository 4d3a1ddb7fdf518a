// libFuzzer target: hostile session files (kvant_session_load, kvant-chat's /load). The
// trailing checksum is repaired and the KV layout and model checksum are taken from the
// file's own header (within small bounds), so mutations reach every check behind them.
// An accepted file is then restored into a KV cache as Session::load does, and a second
// sequence looks up its tokens in the prefix index.
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "runtime/kv_cache.h"
#include "runtime/session.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvant;
  if (size < 56) return 0;
  std::vector<uint8_t> bytes(data, data + size);
  const uint64_t sum = XXH3_64bits(bytes.data(), bytes.size() - 8);
  std::memcpy(bytes.data() + bytes.size() - 8, &sum, 8);

  // Header fields at 12: kv type, n_layers, n_kv_heads, head_dim, page_tokens; at 32: the model checksum.
  uint32_t field[5];
  std::memcpy(field, bytes.data() + 12, sizeof(field));
  uint64_t model_checksum;
  std::memcpy(&model_checksum, bytes.data() + 32, 8);
  auto within = [](uint32_t v, uint32_t lo, uint32_t hi) { return v >= lo && v <= hi ? v : lo + v % (hi - lo + 1); };
  KvLayout layout;
  layout.type = static_cast<KvType>(field[0] % 4);
  layout.n_layers = within(field[1], 1, 4);
  layout.n_kv_heads = within(field[2], 1, 4);
  layout.head_dim = 2 * within(field[3] / 2, 1, 32);
  layout.page_tokens = kPageTokens;
  constexpr int64_t kCtx = 256;
  constexpr int32_t kVocab = 1000;

  auto info = parse_session_file(bytes, layout, model_checksum, kCtx, kVocab);
  if (!info) return 0;
  if (info->tokens.size() > kCtx) __builtin_trap();
  if (info->pages_offset + info->n_pages * layout.page_bytes() + 8 != bytes.size()) __builtin_trap();
  if (info->app_data_offset + info->app_data_size > info->pages_offset) __builtin_trap();

  auto kv = KvCache::create(layout, 2 * (kCtx / kPageTokens));
  if (!kv) __builtin_trap();
  KvCache& cache = **kv;
  const SeqId seq = cache.create_sequence();
  if (!cache.reserve(seq, static_cast<int64_t>(info->tokens.size()))) __builtin_trap();
  const auto& ids = cache.page_ids(seq);
  for (uint64_t i = 0; i < info->n_pages; ++i)
    cache.import_page(ids[i], bytes.data() + info->pages_offset + i * layout.page_bytes());
  cache.commit(seq, info->tokens);
  if (cache.length(seq) != static_cast<int64_t>(info->tokens.size())) __builtin_trap();
  const SeqId other = cache.create_sequence();
  const int64_t reused = cache.attach_prefix(other, info->tokens);
  if (reused < 0 || (reused > 0 && reused >= static_cast<int64_t>(info->tokens.size()))) __builtin_trap();
  cache.truncate(seq, 0);
  cache.release_sequence(other);
  return 0;
}
