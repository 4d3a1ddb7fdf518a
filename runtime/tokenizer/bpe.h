// The BPE model: a pre-tokenized piece of text → token ids, by merging adjacent
// symbols in merge-rank order, as the Hugging Face `tokenizers` BPE model does
// (unknown characters, byte fallback, fuse_unk, ignore_merges, continuing_subword_prefix
// and end_of_word_suffix included; dropout is ignored: encoding is deterministic).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "format/status.h"

namespace kvant::tok {

// (left id, right id) → (rank, merged id): an open-addressing hash table, because
// the merge loop looks pairs up more than anything else.
class MergeTable {
 public:
  struct Entry {
    uint64_t key = kEmpty;
    uint32_t rank = 0;
    int32_t merged = -1;
  };
  void reserve(size_t n);
  void insert(int32_t left, int32_t right, uint32_t rank, int32_t merged);  // a later insert replaces
  const Entry* find(int32_t left, int32_t right) const {
    if (slots_.empty()) return nullptr;
    const uint64_t key = pack(left, right);
    for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
      const Entry& e = slots_[i];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t pack(int32_t l, int32_t r) { return (uint64_t{static_cast<uint32_t>(l)} << 32) | static_cast<uint32_t>(r); }
  size_t slot_of(uint64_t key) const { return static_cast<size_t>((key * 0x9e3779b97f4a7c15ull) >> 20) & mask_; }
  std::vector<Entry> slots_;
  size_t mask_ = 0, count_ = 0;
};

class BpeModel {
 public:
  // `tokens` (token text by id, "" for undefined ids) must outlive the model.
  // `added_ids` are the ids of tokenizer.json's added_tokens (not part of the model's
  // own vocabulary unless the model also has their text). `options` is the
  // tokenizer.json model object without vocab and merges.
  static Result<std::unique_ptr<BpeModel>> create(const std::vector<std::string>& tokens,
                                                  std::span<const uint32_t> merges,
                                                  std::span<const int32_t> added_ids, const nlohmann::json& options);

  // Appends the ids of one piece. With raw_bytes, the piece holds raw bytes that stand
  // for their GPT-2 byte-level characters (see accepts_raw_bytes()).
  void tokenize(std::string_view piece, bool raw_bytes, std::vector<int32_t>& out) const;

  // Whether every byte's byte-level character is a token and no prefix/suffix is set:
  // then byte-level pieces can be tokenized from their raw bytes directly.
  bool accepts_raw_bytes() const { return raw_bytes_ready_; }

  int32_t token_id(std::string_view text) const {
    const auto it = vocab_.find(text);
    return it == vocab_.end() ? -1 : it->second;
  }

 private:
  BpeModel() = default;
  void merge_word(std::string_view piece, bool raw_bytes, std::vector<int32_t>& out) const;
  void merge_symbols(std::vector<int32_t>& ids, std::vector<int32_t>& out) const;

  std::unordered_map<std::string_view, int32_t> vocab_;
  MergeTable merges_;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::string prefix_, suffix_;
  std::vector<int32_t> byte_fallback_ids_;  // 256 entries: "<0xXX>" ids or -1
  std::vector<int32_t> byte_symbol_ids_;    // 256 entries: byte-level character ids
  bool raw_bytes_ready_ = false;

  // Piece → ids cache (text repeats: most pieces are common words).
  struct PieceHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, PieceHash, std::equal_to<>> cache_;
};

}  // namespace kvant::tok
