#include "runtime/tokenizer/pre_tokenizer.h"

#include <utf8proc.h>

#include <functional>
#include <nlohmann/json.hpp>

#include "runtime/tokenizer/json_util.h"
#include "runtime/tokenizer/regex.h"
#include "runtime/tokenizer/unicode.h"

namespace kvant::tok {

using nlohmann::json;

namespace {

constexpr std::string_view kWhere = "tokenizer.pre_tokenizer_json";

// GPT-2's split pattern (the ByteLevel pre-tokenizer's use_regex).
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class Behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

// A stretch of a piece and whether the pattern matched it; after resolve(), whether
// to drop it.
struct Mark {
  size_t start, end;
  bool flag;
};

Result<Behavior> parse_behavior(const json& j) {
  if (!j.contains("behavior") || !j["behavior"].is_string())
    return Status::error(ErrorCode::format, "{}: a split needs a string 'behavior'", kWhere);
  const std::string b = j["behavior"].get<std::string>();
  if (b == "Removed") return Behavior::removed;
  if (b == "Isolated") return Behavior::isolated;
  if (b == "MergedWithPrevious") return Behavior::merged_with_previous;
  if (b == "MergedWithNext") return Behavior::merged_with_next;
  if (b == "Contiguous") return Behavior::contiguous;
  return Status::error(ErrorCode::unsupported, "{}: split behavior '{}' is unknown", kWhere, b);
}

// Turns (stretch, matched) marks into (stretch, remove) marks, as `tokenizers`'
// NormalizedString::split does for each behavior.
void resolve(std::vector<Mark>& marks, Behavior behavior) {
  switch (behavior) {
    case Behavior::removed:
      return;
    case Behavior::isolated:
      for (Mark& m : marks) m.flag = false;
      return;
    case Behavior::merged_with_previous: {
      std::vector<Mark> out;
      bool previous_match = false;
      for (const Mark& m : marks) {
        if (m.flag && !previous_match && !out.empty()) out.back().end = m.end;
        else out.push_back({m.start, m.end, false});
        previous_match = m.flag;
      }
      marks = std::move(out);
      return;
    }
    case Behavior::merged_with_next: {
      std::vector<Mark> out;
      bool previous_match = false;
      for (auto it = marks.rbegin(); it != marks.rend(); ++it) {
        if (it->flag && !previous_match && !out.empty()) out.back().start = it->start;
        else out.push_back({it->start, it->end, false});
        previous_match = it->flag;
      }
      marks.assign(out.rbegin(), out.rend());
      return;
    }
    case Behavior::contiguous: {
      std::vector<Mark> out;
      bool previous_match = false;
      for (const Mark& m : marks) {
        if (m.flag == previous_match && !out.empty()) out.back().end = m.end;
        else out.push_back({m.start, m.end, false});
        previous_match = m.flag;
      }
      marks = std::move(out);
      return;
    }
  }
}

// Marks for a regex: matches and the stretches between them.
Status regex_marks(const Regex& re, std::string_view s, std::vector<Mark>& marks) {
  marks.clear();
  size_t prev = 0;
  KVANT_TRY(re.for_each_match(s, [&](size_t start, size_t end) {
    if (prev != start) marks.push_back({prev, start, false});
    marks.push_back({start, end, true});
    prev = end;
  }));
  if (prev != s.size()) marks.push_back({prev, s.size(), false});
  return Status::ok();
}

// Marks for a character predicate: every matching character is its own match.
void char_marks(const std::function<bool(char32_t)>& match, std::string_view s, std::vector<Mark>& marks) {
  marks.clear();
  size_t last = 0, pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    if (match(next_code_point(s, pos))) {
      if (last < start) marks.push_back({last, start, false});
      marks.push_back({start, pos, true});
      last = pos;
    }
  }
  if (s.size() > last) marks.push_back({last, s.size(), false});
}

// Replaces each piece of `list` by its kept stretches (same text, new piece bounds).
template <class MarkPiece>
Status split_pieces(PieceList& list, PieceList& scratch, Behavior behavior, bool invert, MarkPiece&& mark_piece) {
  thread_local std::vector<Mark> marks;
  scratch.pieces.clear();
  for (const Piece& p : list.pieces) {
    KVANT_TRY(mark_piece(list.view(p), marks));
    if (invert)
      for (Mark& m : marks) m.flag = !m.flag;
    resolve(marks, behavior);
    for (const Mark& m : marks)
      if (!m.flag && m.end > m.start)
        scratch.pieces.push_back({static_cast<uint32_t>(p.begin + m.start), static_cast<uint32_t>(p.begin + m.end),
                                  p.at_start && m.start == 0});
  }
  list.pieces.swap(scratch.pieces);
  return Status::ok();
}

class Split final : public PreTokenizer {
 public:
  Split(Regex pattern, Behavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  Status apply(PieceList& list, PieceList& scratch) const override {
    return split_pieces(list, scratch, behavior_, invert_,
                        [&](std::string_view s, std::vector<Mark>& marks) { return regex_marks(pattern_, s, marks); });
  }

 private:
  Regex pattern_;
  Behavior behavior_;
  bool invert_;
};

class CharSplit final : public PreTokenizer {
 public:
  CharSplit(std::function<bool(char32_t)> match, Behavior behavior) : match_(std::move(match)), behavior_(behavior) {}
  Status apply(PieceList& list, PieceList& scratch) const override {
    return split_pieces(list, scratch, behavior_, false, [&](std::string_view s, std::vector<Mark>& marks) {
      char_marks(match_, s, marks);
      return Status::ok();
    });
  }

 private:
  std::function<bool(char32_t)> match_;
  Behavior behavior_;
};

class ByteLevel final : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, std::unique_ptr<Regex> split)
      : add_prefix_space_(add_prefix_space), split_(std::move(split)) {}
  Status apply(PieceList& list, PieceList& scratch) const override {
    thread_local std::string prefixed;
    thread_local std::vector<Mark> marks;
    const ByteLevelTable& table = byte_level_table();
    scratch.clear();
    for (const Piece& p : list.pieces) {
      std::string_view s = list.view(p);
      if (add_prefix_space_ && s[0] != ' ') {
        prefixed.assign(1, ' ');
        prefixed.append(s);
        s = prefixed;
      }
      marks.clear();
      if (split_) KVANT_TRY(regex_marks(*split_, s, marks));
      else marks.push_back({0, s.size(), false});
      for (const Mark& m : marks) {
        const std::string_view part = s.substr(m.start, m.end - m.start);
        if (part.empty()) continue;
        if (defer_) {
          scratch.add(part, p.at_start && m.start == 0);
          continue;
        }
        const auto begin = static_cast<uint32_t>(scratch.text.size());
        for (char c : part) scratch.text += table.byte_char[static_cast<uint8_t>(c)];
        scratch.pieces.push_back({begin, static_cast<uint32_t>(scratch.text.size()), p.at_start && m.start == 0});
      }
    }
    std::swap(list, scratch);
    return Status::ok();
  }
  bool defer_byte_mapping() override {
    defer_ = true;
    return true;
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> split_;
  bool defer_ = false;
};

enum class PrependScheme { always, first, never };

class Metaspace final : public PreTokenizer {
 public:
  Metaspace(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {
    size_t pos = 0;
    replacement_char_ = next_code_point(replacement_, pos);
  }
  Status apply(PieceList& list, PieceList& scratch) const override {
    thread_local std::string rewritten;
    thread_local std::vector<Mark> marks;
    scratch.clear();
    for (const Piece& p : list.pieces) {
      rewritten.clear();
      for (char c : list.view(p)) {
        if (c == ' ') rewritten += replacement_;
        else rewritten += c;
      }
      const bool prepend = !rewritten.starts_with(replacement_) &&
                           (scheme_ == PrependScheme::always || (scheme_ == PrependScheme::first && p.at_start));
      if (prepend) rewritten.insert(0, replacement_);
      if (!split_) {
        scratch.add(rewritten, p.at_start);
        continue;
      }
      char_marks([this](char32_t c) { return c == replacement_char_; }, rewritten, marks);
      resolve(marks, Behavior::merged_with_next);
      for (const Mark& m : marks)
        if (m.end > m.start) scratch.add(std::string_view(rewritten).substr(m.start, m.end - m.start), p.at_start && m.start == 0);
    }
    std::swap(list, scratch);
    return Status::ok();
  }

 private:
  std::string replacement_;
  char32_t replacement_char_ = 0;
  PrependScheme scheme_;
  bool split_;
};

class Sequence final : public PreTokenizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  Status apply(PieceList& list, PieceList& scratch) const override {
    for (const auto& step : steps_) KVANT_TRY(step->apply(list, scratch));
    return Status::ok();
  }
  bool defer_byte_mapping() override { return !steps_.empty() && steps_.back()->defer_byte_mapping(); }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

bool is_punctuation(char32_t c) {
  if (c < 0x80) return (c >= 0x21 && c <= 0x2f) || (c >= 0x3a && c <= 0x40) || (c >= 0x5b && c <= 0x60) ||
                       (c >= 0x7b && c <= 0x7e);
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS: case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF: case UTF8PROC_CATEGORY_PO:
      return true;
    default:
      return false;
  }
}

std::unique_ptr<PreTokenizer> make_whitespace_split() {
  return std::make_unique<CharSplit>(is_white_space, Behavior::removed);
}

Result<std::unique_ptr<PreTokenizer>> build(const json& j, int depth) {
  if (j.is_null()) return std::unique_ptr<PreTokenizer>();
  if (depth > kMaxComponentDepth) return Status::error(ErrorCode::format, "{}: Sequences nest too deeply", kWhere);
  KVANT_ASSIGN_OR_RETURN(const std::string type, component_type(j, kWhere));
  if (type == "ByteLevel") {
    KVANT_ASSIGN_OR_RETURN(const bool prefix, json_bool(j, "add_prefix_space", true, kWhere));
    KVANT_ASSIGN_OR_RETURN(const bool use_regex, json_bool(j, "use_regex", true, kWhere));
    std::unique_ptr<Regex> split;
    if (use_regex) {
      KVANT_ASSIGN_OR_RETURN(Regex re, Regex::compile(kGpt2Pattern, kWhere));
      split = std::make_unique<Regex>(std::move(re));
    }
    return std::unique_ptr<PreTokenizer>(new ByteLevel(prefix, std::move(split)));
  }
  if (type == "Split") {
    KVANT_ASSIGN_OR_RETURN(Regex pattern, json_pattern(j, kWhere));
    KVANT_ASSIGN_OR_RETURN(const Behavior behavior, parse_behavior(j));
    KVANT_ASSIGN_OR_RETURN(const bool invert, json_bool(j, "invert", false, kWhere));
    return std::unique_ptr<PreTokenizer>(new Split(std::move(pattern), behavior, invert));
  }
  if (type == "Digits") {
    KVANT_ASSIGN_OR_RETURN(const bool individual, json_bool(j, "individual_digits", false, kWhere));
    return std::unique_ptr<PreTokenizer>(
        new CharSplit(is_numeric, individual ? Behavior::isolated : Behavior::contiguous));
  }
  if (type == "Metaspace") {
    KVANT_ASSIGN_OR_RETURN(std::string replacement, json_char(j, "replacement", kWhere));
    KVANT_ASSIGN_OR_RETURN(const bool split, json_bool(j, "split", true, kWhere));
    PrependScheme scheme = PrependScheme::always;
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
      const std::string s = j["prepend_scheme"].is_string() ? j["prepend_scheme"].get<std::string>() : "";
      if (s == "always") scheme = PrependScheme::always;
      else if (s == "first") scheme = PrependScheme::first;
      else if (s == "never") scheme = PrependScheme::never;
      else return Status::error(ErrorCode::format, "{}: Metaspace prepend_scheme {} is unknown", kWhere, j["prepend_scheme"].dump());
    }
    if (j.contains("add_prefix_space") && j["add_prefix_space"] == false) scheme = PrependScheme::never;
    return std::unique_ptr<PreTokenizer>(new Metaspace(std::move(replacement), scheme, split));
  }
  if (type == "Whitespace") {
    KVANT_ASSIGN_OR_RETURN(Regex re, Regex::compile(R"(\w+|[^\w\s]+)", kWhere));
    return std::unique_ptr<PreTokenizer>(new Split(std::move(re), Behavior::removed, /*invert=*/true));
  }
  if (type == "WhitespaceSplit") return make_whitespace_split();
  if (type == "CharDelimiterSplit") {
    KVANT_ASSIGN_OR_RETURN(const std::string delimiter, json_char(j, "delimiter", kWhere));
    size_t pos = 0;
    const char32_t d = next_code_point(delimiter, pos);
    return std::unique_ptr<PreTokenizer>(new CharSplit([d](char32_t c) { return c == d; }, Behavior::removed));
  }
  if (type == "Punctuation") {
    Behavior behavior = Behavior::isolated;
    if (j.contains("behavior")) {
      KVANT_ASSIGN_OR_RETURN(behavior, parse_behavior(j));
    }
    return std::unique_ptr<PreTokenizer>(new CharSplit(is_punctuation, behavior));
  }
  if (type == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    steps.push_back(make_whitespace_split());
    steps.push_back(std::make_unique<CharSplit>(is_punctuation, Behavior::isolated));
    return std::unique_ptr<PreTokenizer>(new Sequence(std::move(steps)));
  }
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
      return Status::error(ErrorCode::format, "{}: Sequence has no 'pretokenizers' list", kWhere);
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const json& step : j["pretokenizers"]) {
      KVANT_ASSIGN_OR_RETURN(auto p, build(step, depth + 1));
      if (p) steps.push_back(std::move(p));
    }
    return std::unique_ptr<PreTokenizer>(new Sequence(std::move(steps)));
  }
  return Status::error(ErrorCode::unsupported,
                       "{}: pre-tokenizer type '{}' is not supported (kvant supports ByteLevel, Split, Digits, "
                       "Metaspace, Whitespace, WhitespaceSplit, CharDelimiterSplit, Punctuation, BertPreTokenizer, "
                       "Sequence)",
                       kWhere, type);
}

}  // namespace

Result<std::unique_ptr<PreTokenizer>> PreTokenizer::from_json(const json& j) { return build(j, 0); }

}  // namespace kvant::tok
