// The paged KV cache: a pool of pages (kernels/layout.h), sequences as page tables,
// and a prefix index so that a sequence starting with tokens another sequence already
// computed reuses those pages instead of recomputing them (prompt caching).
//
// Full pages are shared read-only by reference count. A sequence that matches only
// part of a cached page gets a private copy of the matching rows (copy on write), so
// every token of a shared prefix is reused. Pages no sequence uses stay in the prefix
// index until the pool needs them (least recently used first).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "format/status.h"
#include "kernels/layout.h"

namespace kvant {

using SeqId = int32_t;

// Memory holding one range of layers of every page. The CPU's pool is host memory; a
// GPU's pool is device memory reached through the copy functions.
struct KvPool {
  KvLayout layout;          // n_layers: the layers this pool holds
  uint8_t* base = nullptr;  // page p at base + p * layout.page_bytes()
  bool device = false;
  std::function<void(uint8_t* dst, const uint8_t* src, size_t bytes)> copy;          // within the pool
  std::function<void(uint8_t* host_dst, const uint8_t* src, size_t bytes)> download;  // pool -> host
  std::function<void(uint8_t* dst, const uint8_t* host_src, size_t bytes)> upload;    // host -> pool
};

class KvCache {
 public:
  // `n_pages` pages of `layout` (every layer). The layers from `host_first_layer` on get
  // host memory now (mapped lazily, zeroed); the layers below it belong to a device pool
  // that add_device_pool() provides.
  static Result<std::unique_ptr<KvCache>> create(const KvLayout& layout, uint32_t n_pages,
                                                 uint32_t host_first_layer = 0);
  ~KvCache();
  void add_device_pool(KvPool pool);  // layers [0, host_first_layer)

  const KvLayout& layout() const { return layout_; }  // every layer: the layout of saved pages
  const KvLayout& host_layout() const { return host_.layout; }
  const KvPool* device_pool() const { return device_ ? &*device_ : nullptr; }
  uint32_t n_pages() const { return n_pages_; }
  uint32_t free_pages() const;
  uint64_t bytes() const { return static_cast<uint64_t>(n_pages_) * layout_.page_bytes(); }

  SeqId create_sequence();
  void release_sequence(SeqId seq);  // its pages go back to the pool (or stay cached)
  bool has_sequence(SeqId seq) const { return seqs_.contains(seq); }
  int64_t length(SeqId seq) const;   // positions stored so far

  // Makes room for positions [length, length + n): allocates pages as needed. Fails
  // (context_full) when the pool has no page left.
  Status reserve(SeqId seq, int64_t n);
  // Marks positions up to length + n as written, recording their tokens for the prefix
  // index. Call after the model has written their K/V.
  void commit(SeqId seq, std::span<const int32_t> tokens);
  // Drops the positions from `new_length` on (for rewinding a sequence).
  void truncate(SeqId seq, int64_t new_length);

  // For an empty sequence: attaches the longest cached prefix of `tokens` (whole
  // pages by reference, a partial page by copy) and returns how many tokens it covers.
  // At most tokens.size() - 1 are reused, so the caller computes at least the last
  // token's logits.
  int64_t attach_prefix(SeqId seq, std::span<const int32_t> tokens);

  // Host-pool page base pointers of a sequence, position p in page p / page_tokens.
  uint8_t* const* page_table(SeqId seq) const;
  // Page ids of a sequence (UINT32_MAX for pages a sliding window dropped).
  const std::vector<uint32_t>& page_ids(SeqId seq) const { return seqs_.at(seq).pages; }
  // A page's bytes in the every-layer layout (device layers first), and back.
  void export_page(uint32_t page, uint8_t* out) const;
  void import_page(uint32_t page, const uint8_t* in);
  // Frees the pages of positions below `first_kept` (sliding window) whose every
  // position is out of use; their table entries become null.
  void drop_before(SeqId seq, int64_t first_kept);

  uint8_t* page_data(uint32_t page) const {
    return host_.base ? host_.base + static_cast<uint64_t>(page) * host_.layout.page_bytes() : nullptr;
  }
  const std::vector<int32_t>& tokens(SeqId seq) const;

 private:
  struct Page {
    int32_t refs = 0;
    uint64_t parent_hash = 0;     // hash of every token before this page
    uint64_t hash = 0;            // hash of every token through this page (full pages)
    int32_t filled = 0;           // positions written
    bool indexed = false;
    std::vector<int32_t> tokens;  // the tokens of its positions
    std::list<uint32_t>::iterator lru;
  };
  struct Sequence {
    std::vector<uint32_t> pages;  // page ids; UINT32_MAX for dropped pages
    std::vector<uint8_t*> table;  // base pointers (null for dropped pages)
    std::vector<int32_t> tokens;
    int64_t length = 0;
  };

  KvCache() = default;
  Result<uint32_t> take_page();
  void unref(uint32_t page);
  void index_page(uint32_t page);
  void copy_page(uint32_t dst, uint32_t src);
  void copy_rows(uint32_t dst, uint32_t src, int64_t rows);

  KvLayout layout_;
  uint32_t n_pages_ = 0;
  KvPool host_;
  std::optional<KvPool> device_;
  uint64_t host_bytes_ = 0;
  std::vector<Page> pages_;
  std::vector<uint32_t> free_;
  std::list<uint32_t> cached_lru_;                          // unreferenced but indexed pages
  std::unordered_multimap<uint64_t, uint32_t> by_parent_;  // parent hash -> indexed pages
  std::unordered_map<SeqId, Sequence> seqs_;
  SeqId next_seq_ = 0;
};

}  // namespace kvant
