#include "runtime/kv_cache.h"

#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>

namespace kvant {

namespace {
constexpr uint64_t kHashSeed = 0x6b76616e74ull;  // "kvant"
constexpr uint32_t kNoPage = UINT32_MAX;

uint64_t physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && size > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(size) : UINT64_MAX;
}
}  // namespace

Result<std::unique_ptr<KvCache>> KvCache::create(const KvLayout& layout, uint32_t n_pages, uint32_t host_first_layer) {
  if (n_pages == 0) return Status::error(ErrorCode::invalid_argument, "the KV cache needs at least one page");
  std::unique_ptr<KvCache> c(new KvCache());
  c->layout_ = layout;
  c->n_pages_ = n_pages;
  c->host_.layout = layout;
  c->host_.layout.n_layers = layout.n_layers - std::min(host_first_layer, layout.n_layers);
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(n_pages), c->host_.layout.page_bytes(), &bytes) ||
      bytes > physical_memory_bytes())
    return Status::error(ErrorCode::out_of_memory,
                         "KV cache of {} pages × {} bytes does not fit in this machine's {:.1f} GB of memory; use a "
                         "smaller context or a smaller KV type",
                         n_pages, c->host_.layout.page_bytes(), static_cast<double>(physical_memory_bytes()) / 1e9);
  if (bytes > 0) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      return Status::error(ErrorCode::out_of_memory, "cannot allocate a KV cache of {:.1f} MB",
                           static_cast<double>(bytes) / 1e6);
    c->host_.base = static_cast<uint8_t*>(p);
    c->host_bytes_ = bytes;
  }
  c->pages_.resize(n_pages);
  c->free_.reserve(n_pages);
  for (uint32_t i = n_pages; i-- > 0;) c->free_.push_back(i);
  return c;
}

KvCache::~KvCache() {
  if (host_.base) munmap(host_.base, host_bytes_);
}

void KvCache::add_device_pool(KvPool pool) { device_ = std::move(pool); }

// Every pool's part of page `src` into page `dst`.
void KvCache::copy_page(uint32_t dst, uint32_t src) {
  if (host_.base)
    std::memcpy(page_data(dst), page_data(src), host_.layout.page_bytes());
  if (device_) {
    const uint64_t pb = device_->layout.page_bytes();
    device_->copy(device_->base + dst * pb, device_->base + src * pb, pb);
  }
}

// The first `rows` positions of every region of page `src` into page `dst`.
void KvCache::copy_rows(uint32_t dst, uint32_t src, int64_t rows) {
  auto copy_pool = [&](const KvPool& pool, auto&& copy) {
    const KvLayout& L = pool.layout;
    const uint64_t pb = L.page_bytes();
    for (uint32_t l = 0; l < L.n_layers; ++l)
      for (uint32_t kind = 0; kind < 2; ++kind)
        for (uint32_t h = 0; h < L.n_kv_heads; ++h) {
          const uint64_t off = L.region_offset(l, kind, h);
          copy(pool.base + dst * pb + off, pool.base + src * pb + off, static_cast<size_t>(rows) * L.row_bytes());
          if (L.quantized())
            copy(pool.base + dst * pb + off + L.scales_offset(), pool.base + src * pb + off + L.scales_offset(),
                 static_cast<size_t>(rows) * 2);
          if (kind == 0 && L.key_offsets() && rows > 0)
            copy(pool.base + dst * pb + off + L.offset_row_offset(), pool.base + src * pb + off + L.offset_row_offset(),
                 static_cast<size_t>(L.offset_row_bytes()));
        }
  };
  if (host_.base) copy_pool(host_, [](uint8_t* d, const uint8_t* s, size_t n) { std::memcpy(d, s, n); });
  if (device_) copy_pool(*device_, device_->copy);
}

void KvCache::export_page(uint32_t page, uint8_t* out) const {
  if (device_) {
    const uint64_t pb = device_->layout.page_bytes();
    device_->download(out, device_->base + page * pb, pb);
    out += pb;
  }
  if (host_.base) std::memcpy(out, page_data(page), host_.layout.page_bytes());
}

void KvCache::import_page(uint32_t page, const uint8_t* in) {
  if (device_) {
    const uint64_t pb = device_->layout.page_bytes();
    device_->upload(device_->base + page * pb, in, pb);
    in += pb;
  }
  if (host_.base) std::memcpy(page_data(page), in, host_.layout.page_bytes());
}

uint32_t KvCache::free_pages() const { return static_cast<uint32_t>(free_.size() + cached_lru_.size()); }

SeqId KvCache::create_sequence() {
  const SeqId id = next_seq_++;
  seqs_[id] = Sequence{};
  return id;
}

int64_t KvCache::length(SeqId seq) const { return seqs_.at(seq).length; }
uint8_t* const* KvCache::page_table(SeqId seq) const { return seqs_.at(seq).table.data(); }
const std::vector<int32_t>& KvCache::tokens(SeqId seq) const { return seqs_.at(seq).tokens; }

Result<uint32_t> KvCache::take_page() {
  uint32_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else if (!cached_lru_.empty()) {  // evict the least recently used cached page
    id = cached_lru_.front();
    cached_lru_.pop_front();
    Page& pg = pages_[id];
    auto range = by_parent_.equal_range(pg.parent_hash);
    for (auto it = range.first; it != range.second; ++it)
      if (it->second == id) {
        by_parent_.erase(it);
        break;
      }
    pg.indexed = false;
  } else {
    return Status::error(ErrorCode::context_full, "the KV cache is full: all {} pages ({} tokens) are in use",
                         n_pages_, static_cast<uint64_t>(n_pages_) * layout_.page_tokens);
  }
  Page& pg = pages_[id];
  pg.refs = 1;
  pg.filled = 0;
  pg.hash = pg.parent_hash = 0;
  pg.tokens.clear();
  return id;
}

void KvCache::unref(uint32_t id) {
  Page& pg = pages_[id];
  if (--pg.refs > 0) return;
  if (pg.indexed) {
    cached_lru_.push_back(id);
    pg.lru = std::prev(cached_lru_.end());
  } else {
    free_.push_back(id);
  }
}

void KvCache::index_page(uint32_t id) {
  Page& pg = pages_[id];
  if (pg.indexed) return;
  by_parent_.emplace(pg.parent_hash, id);
  pg.indexed = true;
}

void KvCache::release_sequence(SeqId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (uint32_t p : it->second.pages)
    if (p != kNoPage) unref(p);
  seqs_.erase(it);
}

Status KvCache::reserve(SeqId seq, int64_t n) {
  Sequence& s = seqs_.at(seq);
  const int64_t P = layout_.page_tokens;
  const auto needed = static_cast<size_t>((s.length + n + P - 1) / P);
  while (s.pages.size() < needed) {
    KVANT_ASSIGN_OR_RETURN(const uint32_t id, take_page());
    Page& pg = pages_[id];
    pg.parent_hash = s.pages.empty() ? kHashSeed : pages_[s.pages.back()].hash;
    s.pages.push_back(id);
    s.table.push_back(page_data(id));
  }
  return Status::ok();
}

void KvCache::commit(SeqId seq, std::span<const int32_t> tokens) {
  Sequence& s = seqs_.at(seq);
  const int64_t P = layout_.page_tokens;
  for (int32_t tok : tokens) {
    const auto page_index = static_cast<size_t>(s.length / P);
    Page& pg = pages_[s.pages[page_index]];
    pg.tokens.push_back(tok);
    pg.filled = static_cast<int32_t>(pg.tokens.size());
    s.tokens.push_back(tok);
    ++s.length;
    if (pg.filled == P) {
      pg.hash = XXH3_64bits_withSeed(pg.tokens.data(), pg.tokens.size() * sizeof(int32_t), pg.parent_hash);
      // The next page (if already reserved) continues this chain.
      if (page_index + 1 < s.pages.size()) pages_[s.pages[page_index + 1]].parent_hash = pg.hash;
    }
    index_page(s.pages[page_index]);
  }
}

void KvCache::truncate(SeqId seq, int64_t new_length) {
  Sequence& s = seqs_.at(seq);
  if (new_length >= s.length) return;
  const int64_t P = layout_.page_tokens;
  const auto keep_pages = static_cast<size_t>((new_length + P - 1) / P);
  while (s.pages.size() > keep_pages) {
    if (s.pages.back() != kNoPage) unref(s.pages.back());
    s.pages.pop_back();
    s.table.pop_back();
  }
  s.length = new_length;
  s.tokens.resize(static_cast<size_t>(new_length));
  if (new_length % P != 0 && !s.pages.empty()) {
    // The last page is partly rewound: give the sequence a private page if it is
    // shared or indexed, so other users keep their rows.
    const uint32_t id = s.pages.back();
    Page& pg = pages_[id];
    const auto keep = static_cast<int32_t>(new_length % P);
    if (pg.refs > 1 || pg.indexed) {
      auto fresh = take_page();
      if (fresh) {
        copy_page(*fresh, id);
        Page& np = pages_[*fresh];
        np.parent_hash = pg.parent_hash;
        np.tokens.assign(pg.tokens.begin(), pg.tokens.begin() + keep);
        np.filled = keep;
        s.pages.back() = *fresh;
        s.table.back() = page_data(*fresh);
        unref(id);
        return;
      }
    }
    pg.tokens.resize(static_cast<size_t>(keep));
    pg.filled = keep;
  }
}

int64_t KvCache::attach_prefix(SeqId seq, std::span<const int32_t> tokens) {
  Sequence& s = seqs_.at(seq);
  if (s.length != 0 || tokens.size() < 2) return 0;
  const int64_t P = layout_.page_tokens;
  const auto limit = static_cast<int64_t>(tokens.size()) - 1;  // always compute the last token
  uint64_t parent = kHashSeed;
  int64_t reused = 0;
  while (reused < limit) {
    const int64_t want = std::min<int64_t>(P, limit - reused);
    // The cached page after `parent` sharing the longest run with tokens[reused, ...).
    uint32_t best = kNoPage;
    int64_t best_len = 0;
    auto range = by_parent_.equal_range(parent);
    for (auto it = range.first; it != range.second; ++it) {
      const Page& pg = pages_[it->second];
      int64_t m = 0;
      const int64_t n = std::min<int64_t>(want, pg.filled);
      while (m < n && pg.tokens[static_cast<size_t>(m)] == tokens[static_cast<size_t>(reused + m)]) ++m;
      if (m > best_len) {
        best_len = m;
        best = it->second;
      }
    }
    if (best == kNoPage) break;
    Page& src = pages_[best];
    uint32_t id = best;
    if (best_len == P) {  // a whole page: share it
      if (src.refs == 0) cached_lru_.erase(src.lru);
      ++src.refs;
    } else {  // part of a page: copy its rows into a private page
      auto fresh = take_page();
      if (!fresh) break;
      id = *fresh;
      Page& np = pages_[id];
      copy_rows(id, best, best_len);
      np.parent_hash = parent;
      np.tokens.assign(src.tokens.begin(), src.tokens.begin() + best_len);
      np.filled = static_cast<int32_t>(best_len);
    }
    s.pages.push_back(id);
    s.table.push_back(page_data(id));
    s.tokens.insert(s.tokens.end(), tokens.begin() + reused, tokens.begin() + reused + best_len);
    reused += best_len;
    s.length = reused;
    if (best_len < P) break;
    parent = src.hash;
  }
  return reused;
}

void KvCache::drop_before(SeqId seq, int64_t first_kept) {
  Sequence& s = seqs_.at(seq);
  const int64_t P = layout_.page_tokens;
  for (size_t i = 0; i < s.pages.size() && static_cast<int64_t>(i + 1) * P <= first_kept; ++i) {
    if (s.pages[i] == kNoPage) continue;
    unref(s.pages[i]);
    s.pages[i] = kNoPage;
    s.table[i] = nullptr;
  }
}

}  // namespace kvant
