#include "runtime/tokenizer/post_processor.h"

#include <nlohmann/json.hpp>

#include "runtime/tokenizer/json_util.h"

namespace kvant::tok {

using nlohmann::json;

namespace {

constexpr std::string_view kWhere = "tokenizer.post_processor_json";

// The single-sequence template: special-token ids and the sequence, in order.
class Template final : public PostProcessor {
 public:
  struct Item {
    bool is_sequence = false;
    std::vector<int32_t> ids;  // special-token items
  };
  explicit Template(std::vector<Item> items) : items_(std::move(items)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<int32_t> out;
    for (const Item& item : items_) {
      if (item.is_sequence) out.insert(out.end(), ids.begin(), ids.end());
      else out.insert(out.end(), item.ids.begin(), item.ids.end());
    }
    ids = std::move(out);
  }

 private:
  std::vector<Item> items_;
};

class Identity final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&, bool) const override {}
};

class Sequence final : public PostProcessor {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PostProcessor>> steps) : steps_(std::move(steps)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& step : steps_) step->process(ids, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

Result<int32_t> checked_id(const json& v, int32_t vocab_size, std::string_view what) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab_size)
    return Status::error(ErrorCode::format, "{}: {} id {} is not a token id below {}", kWhere, what, v.dump(),
                         vocab_size);
  return static_cast<int32_t>(v.get<int64_t>());
}

Result<std::unique_ptr<PostProcessor>> build_template(const json& j, int32_t vocab_size) {
  if (!j.contains("single") || !j["single"].is_array())
    return Status::error(ErrorCode::format, "{}: TemplateProcessing has no 'single' list", kWhere);
  const json specials = j.contains("special_tokens") ? j["special_tokens"] : json::object();
  std::vector<Template::Item> items;
  for (const json& piece : j["single"]) {
    Template::Item item;
    if (piece.contains("Sequence")) {
      const json& seq = piece["Sequence"];
      // Only sequence A exists for a single input; tokenizers ignores B there.
      if (!seq.is_object() || (seq.contains("id") && seq["id"] != "A")) continue;
      item.is_sequence = true;
    } else if (piece.contains("SpecialToken") && piece["SpecialToken"].is_object() &&
               piece["SpecialToken"].contains("id") && piece["SpecialToken"]["id"].is_string()) {
      const std::string name = piece["SpecialToken"]["id"].get<std::string>();
      if (!specials.is_object() || !specials.contains(name) || !specials[name].contains("ids") ||
          !specials[name]["ids"].is_array())
        return Status::error(ErrorCode::format, "{}: the template names special token '{}' without its ids", kWhere,
                             name);
      for (const json& id : specials[name]["ids"]) {
        KVANT_ASSIGN_OR_RETURN(const int32_t v, checked_id(id, vocab_size, name));
        item.ids.push_back(v);
      }
    } else {
      return Status::error(ErrorCode::format, "{}: template item {:.80} is neither a Sequence nor a SpecialToken",
                           kWhere, piece.dump());
    }
    items.push_back(std::move(item));
  }
  return std::unique_ptr<PostProcessor>(new Template(std::move(items)));
}

// RobertaProcessing / BertProcessing: [cls] sequence [sep], given as ["text", id] pairs.
Result<std::unique_ptr<PostProcessor>> build_cls_sep(const json& j, int32_t vocab_size) {
  std::vector<Template::Item> items(3);
  for (const char* key : {"cls", "sep"}) {
    if (!j.contains(key) || !j[key].is_array() || j[key].size() != 2)
      return Status::error(ErrorCode::format, "{}: '{}' is not a [token, id] pair", kWhere, key);
    KVANT_ASSIGN_OR_RETURN(const int32_t id, checked_id(j[key][1], vocab_size, key));
    items[std::string_view(key) == "cls" ? 0 : 2].ids.push_back(id);
  }
  items[1].is_sequence = true;
  return std::unique_ptr<PostProcessor>(new Template(std::move(items)));
}

Result<std::unique_ptr<PostProcessor>> build(const json& j, int32_t vocab_size, int depth) {
  if (j.is_null()) return std::unique_ptr<PostProcessor>();
  if (depth > kMaxComponentDepth) return Status::error(ErrorCode::format, "{}: Sequences nest too deeply", kWhere);
  KVANT_ASSIGN_OR_RETURN(const std::string type, component_type(j, kWhere));
  if (type == "TemplateProcessing") return build_template(j, vocab_size);
  if (type == "ByteLevel") return std::unique_ptr<PostProcessor>(new Identity());
  if (type == "RobertaProcessing" || type == "BertProcessing") return build_cls_sep(j, vocab_size);
  if (type == "Sequence") {
    if (!j.contains("processors") || !j["processors"].is_array())
      return Status::error(ErrorCode::format, "{}: Sequence has no 'processors' list", kWhere);
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (const json& step : j["processors"]) {
      KVANT_ASSIGN_OR_RETURN(auto p, build(step, vocab_size, depth + 1));
      if (p) steps.push_back(std::move(p));
    }
    return std::unique_ptr<PostProcessor>(new Sequence(std::move(steps)));
  }
  return Status::error(ErrorCode::unsupported,
                       "{}: post-processor type '{}' is not supported (kvant supports TemplateProcessing, ByteLevel, "
                       "RobertaProcessing, BertProcessing, Sequence)",
                       kWhere, type);
}

}  // namespace

Result<std::unique_ptr<PostProcessor>> PostProcessor::from_json(const json& j, int32_t vocab_size) {
  return build(j, vocab_size, 0);
}

}  // namespace kvant::tok
