#include "runtime/tokenizer/bpe.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "runtime/tokenizer/unicode.h"

namespace kvant::tok {

using nlohmann::json;

void MergeTable::reserve(size_t n) {
  size_t capacity = 16;
  while (capacity < n * 2) capacity *= 2;
  slots_.assign(capacity, Entry{});
  mask_ = capacity - 1;
  count_ = 0;
}

void MergeTable::insert(int32_t left, int32_t right, uint32_t rank, int32_t merged) {
  if ((count_ + 1) * 2 > slots_.size()) {  // keep the load factor at most 1/2
    std::vector<Entry> old = std::move(slots_);
    reserve(std::max<size_t>(16, old.size()));
    for (const Entry& e : old)
      if (e.key != kEmpty) insert(static_cast<int32_t>(e.key >> 32), static_cast<int32_t>(e.key & 0xffffffffu), e.rank, e.merged);
  }
  const uint64_t key = pack(left, right);
  for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
    Entry& e = slots_[i];
    if (e.key == key) {  // a repeated merge: the later rank wins, as in a Rust HashMap collect
      e.rank = rank;
      e.merged = merged;
      return;
    }
    if (e.key == kEmpty) {
      e = Entry{key, rank, merged};
      ++count_;
      return;
    }
  }
}

namespace {

Result<std::string> optional_string(const json& options, const char* key) {
  if (!options.contains(key) || options[key].is_null()) return std::string();
  if (!options[key].is_string())
    return Status::error(ErrorCode::format, "tokenizer.bpe_options_json: '{}' is not a string", key);
  return options[key].get<std::string>();
}

Result<bool> optional_bool(const json& options, const char* key) {
  if (!options.contains(key) || options[key].is_null()) return false;
  if (!options[key].is_boolean())
    return Status::error(ErrorCode::format, "tokenizer.bpe_options_json: '{}' is not a boolean", key);
  return options[key].get<bool>();
}

}  // namespace

Result<std::unique_ptr<BpeModel>> BpeModel::create(const std::vector<std::string>& tokens,
                                                   std::span<const uint32_t> merges,
                                                   std::span<const int32_t> added_ids, const json& options) {
  if (!options.is_object()) return Status(ErrorCode::format, "tokenizer.bpe_options_json is not a JSON object");
  if (options.contains("type") && options["type"] != "BPE")
    return Status::error(ErrorCode::unsupported, "tokenizer model type {} is not supported (kvant supports BPE)",
                         options["type"].dump());
  std::unique_ptr<BpeModel> m(new BpeModel());
  KVANT_ASSIGN_OR_RETURN(m->prefix_, optional_string(options, "continuing_subword_prefix"));
  KVANT_ASSIGN_OR_RETURN(m->suffix_, optional_string(options, "end_of_word_suffix"));
  KVANT_ASSIGN_OR_RETURN(const std::string unk_token, optional_string(options, "unk_token"));
  KVANT_ASSIGN_OR_RETURN(m->fuse_unk_, optional_bool(options, "fuse_unk"));
  KVANT_ASSIGN_OR_RETURN(m->byte_fallback_, optional_bool(options, "byte_fallback"));
  KVANT_ASSIGN_OR_RETURN(m->ignore_merges_, optional_bool(options, "ignore_merges"));

  // The model's vocabulary: every defined token; an added token's text only when no
  // model token already has it.
  std::vector<bool> is_added(tokens.size(), false);
  for (int32_t id : added_ids)
    if (id >= 0 && static_cast<size_t>(id) < tokens.size()) is_added[id] = true;
  m->vocab_.reserve(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id)
    if (!tokens[id].empty() && !is_added[id]) m->vocab_.emplace(tokens[id], static_cast<int32_t>(id));
  for (size_t id = 0; id < tokens.size(); ++id)
    if (!tokens[id].empty() && is_added[id]) m->vocab_.emplace(tokens[id], static_cast<int32_t>(id));

  if (merges.size() % 2 != 0)
    return Status::error(ErrorCode::format, "tokenizer.merges has an odd number of ids ({})", merges.size());
  m->merges_.reserve(merges.size() / 2);
  std::string merged_text;
  for (size_t rank = 0; rank < merges.size() / 2; ++rank) {
    const uint32_t left = merges[2 * rank], right = merges[2 * rank + 1];
    if (left >= tokens.size() || right >= tokens.size())
      return Status::error(ErrorCode::format, "tokenizer.merges: merge {} names id {} but there are {} tokens", rank,
                           std::max(left, right), tokens.size());
    const std::string& r = tokens[right];
    merged_text = tokens[left];
    if (!m->prefix_.empty() && r.starts_with(m->prefix_)) merged_text.append(r, m->prefix_.size());
    else merged_text += r;
    const auto it = m->vocab_.find(merged_text);
    if (it == m->vocab_.end())
      return Status::error(ErrorCode::format, "tokenizer.merges: merge {} ('{}' + '{}') makes '{}', which is not a token",
                           rank, tokens[left], r, merged_text);
    m->merges_.insert(static_cast<int32_t>(left), static_cast<int32_t>(right), static_cast<uint32_t>(rank), it->second);
  }

  if (!unk_token.empty()) m->unk_id_ = m->token_id(unk_token);  // missing: unknown characters are dropped
  if (m->byte_fallback_) {
    m->byte_fallback_ids_.resize(256);
    for (int b = 0; b < 256; ++b) m->byte_fallback_ids_[b] = m->token_id(fmt::format("<0x{:02X}>", b));
  }
  const ByteLevelTable& table = byte_level_table();
  m->byte_symbol_ids_.resize(256);
  bool all_bytes = m->prefix_.empty() && m->suffix_.empty();
  for (int b = 0; b < 256; ++b) {
    m->byte_symbol_ids_[b] = m->token_id(table.byte_char[b]);
    all_bytes = all_bytes && m->byte_symbol_ids_[b] >= 0;
  }
  m->raw_bytes_ready_ = all_bytes;
  return m;
}

void BpeModel::tokenize(std::string_view piece, bool raw_bytes, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  constexpr size_t kMaxCachedPiece = 128;
  constexpr size_t kMaxCacheEntries = 1 << 16;
  const bool cacheable = piece.size() <= kMaxCachedPiece;
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    const auto it = cache_.find(piece);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge_word(piece, raw_bytes, out);
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::string(piece), std::vector<int32_t>(out.begin() + static_cast<ptrdiff_t>(first), out.end()));
  }
}

void BpeModel::merge_word(std::string_view piece, bool raw_bytes, std::vector<int32_t>& out) const {
  thread_local std::vector<int32_t> symbols;
  thread_local std::string text;
  symbols.clear();
  if (raw_bytes) {
    if (ignore_merges_) {
      const ByteLevelTable& table = byte_level_table();
      text.clear();
      for (char c : piece) text += table.byte_char[static_cast<uint8_t>(c)];
      if (const int32_t id = token_id(text); id >= 0) {
        out.push_back(id);
        return;
      }
    }
    for (char c : piece) symbols.push_back(byte_symbol_ids_[static_cast<uint8_t>(c)]);
    merge_symbols(symbols, out);
    return;
  }
  if (ignore_merges_)
    if (const int32_t id = token_id(piece); id >= 0) {
      out.push_back(id);
      return;
    }
  // One symbol per character (with the subword prefix / word suffix where they apply);
  // a character that is not a token becomes its <0xXX> bytes, or unk, or nothing.
  int32_t pending_unk = -1;
  size_t pos = 0;
  while (pos < piece.size()) {
    const size_t start = pos;
    pos += utf8_length(static_cast<uint8_t>(piece[pos]));
    std::string_view s = piece.substr(start, pos - start);
    if ((start > 0 && !prefix_.empty()) || (pos == piece.size() && !suffix_.empty())) {
      text.assign(start > 0 ? prefix_ : std::string());
      text.append(s);
      if (pos == piece.size()) text += suffix_;
      s = text;
    }
    if (const int32_t id = token_id(s); id >= 0) {
      if (pending_unk >= 0) symbols.push_back(pending_unk);
      pending_unk = -1;
      symbols.push_back(id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : s) all = all && byte_fallback_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all) {  // like tokenizers, a pending unk stays pending across byte fallback
        for (char c : s) symbols.push_back(byte_fallback_ids_[static_cast<uint8_t>(c)]);
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (pending_unk >= 0 && !fuse_unk_) symbols.push_back(pending_unk);
      pending_unk = unk_id_;
    }
  }
  if (pending_unk >= 0) symbols.push_back(pending_unk);
  merge_symbols(symbols, out);
}

void BpeModel::merge_symbols(std::vector<int32_t>& ids, std::vector<int32_t>& out) const {
  const size_t n = ids.size();
  if (n < 2) {
    out.insert(out.end(), ids.begin(), ids.end());
    return;
  }
  // Symbols form a linked list; a heap holds candidate merges ordered by (rank, position)
  // so that the lowest-ranked pair merges first and, among equal ranks, the leftmost.
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<int32_t> next, prev;
  thread_local std::vector<Candidate> heap;
  next.resize(n);
  prev.resize(n);
  heap.clear();
  for (size_t i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
    prev[i] = static_cast<int32_t>(i) - 1;
  }
  const auto push = [&](int32_t pos) {
    if (const MergeTable::Entry* e = merges_.find(ids[pos], ids[next[pos]])) {
      heap.push_back({e->rank, pos, e->merged});
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  constexpr int32_t kRemoved = -2;
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const Candidate top = heap.back();
    heap.pop_back();
    const int32_t pos = top.pos;
    if (ids[pos] == kRemoved || next[pos] < 0) continue;
    const int32_t right = next[pos];
    const MergeTable::Entry* e = merges_.find(ids[pos], ids[right]);
    if (!e || e->merged != top.merged) continue;  // stale: one side has merged since
    ids[pos] = top.merged;
    ids[right] = kRemoved;
    next[pos] = next[right];
    if (next[pos] >= 0) prev[next[pos]] = pos;
    if (prev[pos] >= 0) push(prev[pos]);
    if (next[pos] >= 0) push(pos);
  }
  for (size_t i = 0; i < n; ++i)
    if (ids[i] != kRemoved) out.push_back(ids[i]);
}

}  // namespace kvant::tok
