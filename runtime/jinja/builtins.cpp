#include "runtime/jinja/builtins.h"

#include <utf8proc.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fmt/format.h>
#include <map>
#include <set>

#include "runtime/jinja/string_methods.h"
#include "runtime/tokenizer/unicode.h"

namespace kvant::jinja {

namespace {

constexpr int64_t kMaxRange = 100000;  // Jinja's sandbox refuses larger ranges

std::string object_type(const Value& v) { return v.is_none() ? "None" : v.type_name() + " object"; }

Value make_function(std::string name, std::function<Value(const CallArgs&)> fn) {
  auto f = std::make_shared<Function>();
  f->name = std::move(name);
  f->call = std::move(fn);
  return Value(std::shared_ptr<const Function>(std::move(f)));
}

// By value: callers pass temporaries as the fallback.
Value arg(const CallArgs& args, size_t position, std::string_view name, const Value& fallback) {
  const Value* v = args.get(position, name);
  return v ? *v : fallback;
}

std::string soft_str(const Value& v) { return v.str(); }

// ---- filters ----

Value filter_tojson(const Value& v, const CallArgs& args) {
  // transformers: json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  const bool ensure_ascii = arg(args, 0, "ensure_ascii", Value(false)).truthy();
  const Value indent_v = arg(args, 1, "indent", Value::none());
  const Value separators = arg(args, 2, "separators", Value::none());
  const bool sort_keys = arg(args, 3, "sort_keys", Value(false)).truthy();
  int indent = -1;
  if (indent_v.is_int() || indent_v.is_bool()) indent = static_cast<int>(std::clamp<int64_t>(indent_v.as_int(), 0, 64));
  else if (!indent_v.is_none() && !indent_v.is_undefined()) throw Error("tojson: indent must be an integer or None");
  std::string item_sep = indent >= 0 ? "," : ", ", key_sep = ": ";
  if (separators.is_list()) {
    const auto& s = separators.as_list().items;
    if (s.size() != 2 || !s[0].is_string() || !s[1].is_string()) throw Error("tojson: separators must be two strings");
    item_sep = s[0].as_string();
    key_sep = s[1].as_string();
  }
  return Value(v.to_json(ensure_ascii, indent, item_sep, key_sep, sort_keys));
}

// Jinja's title filter (not str.title): words start after '-', whitespace, or brackets.
std::string jinja_title(const std::string& s) {
  std::string out;
  bool word_start = true;
  for (size_t pos = 0; pos < s.size();) {
    const char32_t c = tok::next_code_point(s, pos);
    const bool separator = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || python_is_space(c);
    if (separator) {
      tok::append_utf8(out, c);
      word_start = true;
      continue;
    }
    out += word_start ? upper(utf8_of(c)) : lower(utf8_of(c));
    word_start = false;
  }
  return out;
}

std::vector<Value> as_sequence(const Value& v) {
  if (v.is_none()) throw Error("'NoneType' object is not iterable");
  return v.iterate();
}

// Jinja's attribute lookup for map/selectattr/sort: "a.b" walks nested attributes,
// numeric parts index lists.
Value attribute_path(const Value& item, const std::string& path) {
  Value v = item;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (v.is_undefined()) return v;
    v = numeric ? get_item(v, Value(static_cast<int64_t>(std::stoll(part)))) : get_attribute(v, part);
    if (dot == std::string::npos) return v;
    start = dot + 1;
  }
}

Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value(lower(v.as_string()));
  return v;
}

Value filter_map(const Value& v, const CallArgs& args) {
  std::vector<Value> out;
  if (const Value* attribute = args.get(SIZE_MAX, "attribute")) {
    const Value* fallback = args.get(SIZE_MAX, "default");
    for (const Value& item : as_sequence(v)) {
      Value r = attribute_path(item, attribute->str());
      if (r.is_undefined() && fallback) r = *fallback;
      out.push_back(std::move(r));
    }
    return Value::list(std::move(out));
  }
  if (args.positional.empty() || !args.positional[0].is_string()) throw Error("map: give a filter name or attribute=");
  const std::string name = args.positional[0].as_string();
  if (!filter_exists(name)) throw Error(fmt::format("no filter named '{}'", name));
  CallArgs rest;
  rest.positional.assign(args.positional.begin() + 1, args.positional.end());
  rest.keyword = args.keyword;
  for (const Value& item : as_sequence(v)) out.push_back(apply_filter(name, item, rest));
  return Value::list(std::move(out));
}

// select / reject / selectattr / rejectattr
Value filter_select(const Value& v, const CallArgs& args, bool by_attribute, bool keep) {
  size_t next = 0;
  std::string attribute;
  if (by_attribute) {
    if (args.positional.empty()) throw Error("selectattr/rejectattr need an attribute name");
    attribute = args.positional[next++].str();
  }
  std::string test;
  if (next < args.positional.size()) test = args.positional[next++].str();
  if (!test.empty() && !test_exists(test)) throw Error(fmt::format("no test named '{}'", test));
  CallArgs test_args;
  test_args.positional.assign(args.positional.begin() + static_cast<ptrdiff_t>(std::min(next, args.positional.size())),
                              args.positional.end());
  std::vector<Value> out;
  for (const Value& item : as_sequence(v)) {
    const Value subject = by_attribute ? attribute_path(item, attribute) : item;
    const bool pass = test.empty() ? subject.truthy() : apply_test(test, subject, test_args);
    if (pass == keep) out.push_back(item);
  }
  return Value::list(std::move(out));
}

Value filter_sort(const Value& v, const CallArgs& args) {
  const bool reverse = arg(args, 0, "reverse", Value(false)).truthy();
  const bool case_sensitive = arg(args, 1, "case_sensitive", Value(false)).truthy();
  const Value attribute = arg(args, 2, "attribute", Value::none());
  std::vector<Value> items = as_sequence(v);
  const auto key = [&](const Value& item) {
    return sort_key(attribute.is_none() ? item : attribute_path(item, attribute.str()), case_sensitive);
  };
  std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
    return reverse ? Value::less(key(b), key(a)) : Value::less(key(a), key(b));
  });
  return Value::list(std::move(items));
}

Value filter_min_max(const Value& v, const CallArgs& args, bool max) {
  const bool case_sensitive = arg(args, 0, "case_sensitive", Value(false)).truthy();
  const Value attribute = arg(args, 1, "attribute", Value::none());
  const std::vector<Value> items = as_sequence(v);
  if (items.empty()) return Value::undefined(fmt::format("No aggregated item, sequence was empty."));
  const auto key = [&](const Value& item) {
    return sort_key(attribute.is_none() ? item : attribute_path(item, attribute.str()), case_sensitive);
  };
  size_t best = 0;
  for (size_t i = 1; i < items.size(); ++i) {
    const bool better = max ? Value::less(key(items[best]), key(items[i])) : Value::less(key(items[i]), key(items[best]));
    if (better) best = i;
  }
  return items[best];
}

Value filter_int(const Value& v, const CallArgs& args) {
  const Value fallback = arg(args, 0, "default", Value(int64_t{0}));
  const int64_t base = arg(args, 1, "base", Value(int64_t{10})).as_int();
  if (v.is_int() || v.is_bool()) return Value(v.as_int());
  if (v.is_float()) {
    if (!std::isfinite(v.as_float()) || std::fabs(v.as_float()) > 9.2e18) return fallback;
    return Value(static_cast<int64_t>(v.as_float()));
  }
  if (v.is_string()) {
    std::string s = strip(v.as_string(), nullptr);
    s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
    try {
      size_t used = 0;
      const long long r = std::stoll(s, &used, static_cast<int>(base));
      if (used == s.size() && !s.empty()) return Value(static_cast<int64_t>(r));
    } catch (const std::exception&) {
    }
    try {
      size_t used = 0;
      const double d = std::stod(s, &used);
      if (used == s.size() && std::isfinite(d) && std::fabs(d) < 9.2e18) return Value(static_cast<int64_t>(d));
    } catch (const std::exception&) {
    }
  }
  return fallback;
}

Value filter_float(const Value& v, const CallArgs& args) {
  const Value fallback = arg(args, 0, "default", Value(0.0));
  if (v.is_number()) return Value(v.as_float());
  if (v.is_string()) {
    const std::string s = strip(v.as_string(), nullptr);
    try {
      size_t used = 0;
      const double d = std::stod(s, &used);
      if (used == s.size() && !s.empty()) return Value(d);
    } catch (const std::exception&) {
    }
  }
  return fallback;
}

Value filter_round(const Value& v, const CallArgs& args) {
  const int64_t precision = arg(args, 0, "precision", Value(int64_t{0})).as_int();
  const std::string method = arg(args, 1, "method", Value("common")).str();
  if (!v.is_number()) throw Error(fmt::format("round: '{}' is not a number", v.type_name()));
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double x = v.as_float() * scale;
  double r = 0;
  if (method == "common") r = std::nearbyint(x);  // Python's round(): halves go to the even neighbour
  else if (method == "floor") r = std::floor(x);
  else if (method == "ceil") r = std::ceil(x);
  else throw Error("round: method must be 'common', 'ceil' or 'floor'");
  return Value(r / scale);
}

Value filter_indent(const Value& v, const CallArgs& args) {
  const Value width_v = arg(args, 0, "width", Value(int64_t{4}));
  const bool first = arg(args, 1, "first", Value(false)).truthy();
  const bool blank = arg(args, 2, "blank", Value(false)).truthy();
  const std::string pad = width_v.is_string() ? width_v.as_string()
                                              : std::string(static_cast<size_t>(std::clamp<int64_t>(width_v.as_int(), 0, 1000)), ' ');
  // Jinja's do_indent, quirks included: a newline is appended before splitting lines.
  const std::vector<std::string> lines = splitlines(soft_str(v) + "\n");
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) out += blank ? "\n" + pad : "\n";
    if (i > 0 && !blank && !lines[i].empty()) out += pad;
    out += lines[i];
  }
  if (first) out = pad + out;
  return Value(std::move(out));
}

Value filter_items(const Value& v) {
  if (v.is_undefined()) return Value::list({});
  if (!v.is_dict() || v.as_dict().is_namespace) throw Error("items: can only get item pairs from a mapping");
  std::vector<Value> out;
  for (const auto& [k, item] : v.as_dict().items) out.push_back(Value::list({k, item}, true));
  return Value::list(std::move(out));
}

Value filter_dictsort(const Value& v, const CallArgs& args) {
  const bool case_sensitive = arg(args, 0, "case_sensitive", Value(false)).truthy();
  const std::string by = arg(args, 1, "by", Value("key")).str();
  const bool reverse = arg(args, 2, "reverse", Value(false)).truthy();
  std::vector<Value> pairs = filter_items(v).as_list().items;
  const size_t pos = by == "value" ? 1 : 0;
  std::stable_sort(pairs.begin(), pairs.end(), [&](const Value& a, const Value& b) {
    const Value ka = sort_key(a.as_list().items[pos], case_sensitive), kb = sort_key(b.as_list().items[pos], case_sensitive);
    return reverse ? Value::less(kb, ka) : Value::less(ka, kb);
  });
  return Value::list(std::move(pairs));
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

using FilterFn = Value (*)(const Value&, const CallArgs&);

const std::map<std::string, FilterFn, std::less<>>& filters() {
  static const std::map<std::string, FilterFn, std::less<>> table = {
      {"abs", [](const Value& v, const CallArgs&) -> Value {
         if (v.is_float()) return Value(std::fabs(v.as_float()));
         if (v.is_int() || v.is_bool()) {
           if (v.as_int() == INT64_MIN) throw Error("integer overflow");
           return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
         }
         throw Error(fmt::format("bad operand type for abs(): '{}'", v.type_name()));
       }},
      {"attr", [](const Value& v, const CallArgs& a) { return get_attribute(v, arg(a, 0, "name", Value("")).str()); }},
      {"capitalize", [](const Value& v, const CallArgs&) { return Value(capitalize(soft_str(v))); }},
      {"count", [](const Value& v, const CallArgs&) { return Value(static_cast<int64_t>(v.length())); }},
      {"default", [](const Value& v, const CallArgs& a) {
         const bool boolean = arg(a, 1, "boolean", Value(false)).truthy();
         if (v.is_undefined() || (boolean && !v.truthy())) return arg(a, 0, "default_value", Value(""));
         return v;
       }},
      {"dictsort", filter_dictsort},
      {"escape", [](const Value& v, const CallArgs&) { return Value(html_escape(soft_str(v))); }},
      {"first", [](const Value& v, const CallArgs&) {
         const std::vector<Value> items = as_sequence(v);
         return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
       }},
      {"float", filter_float},
      {"indent", filter_indent},
      {"int", filter_int},
      {"items", [](const Value& v, const CallArgs&) { return filter_items(v); }},
      {"join", [](const Value& v, const CallArgs& a) {
         const std::string sep = arg(a, 0, "d", Value("")).str();
         const Value attribute = arg(a, 1, "attribute", Value::none());
         std::string out;
         bool first = true;
         for (const Value& item : as_sequence(v)) {
           if (!first) out += sep;
           first = false;
           out += (attribute.is_none() ? item : attribute_path(item, attribute.str())).str();
         }
         return Value(std::move(out));
       }},
      {"last", [](const Value& v, const CallArgs&) {
         const std::vector<Value> items = as_sequence(v);
         return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
       }},
      {"length", [](const Value& v, const CallArgs&) { return Value(static_cast<int64_t>(v.length())); }},
      {"list", [](const Value& v, const CallArgs&) { return Value::list(as_sequence(v)); }},
      {"lower", [](const Value& v, const CallArgs&) { return Value(lower(soft_str(v))); }},
      {"map", filter_map},
      {"max", [](const Value& v, const CallArgs& a) { return filter_min_max(v, a, true); }},
      {"min", [](const Value& v, const CallArgs& a) { return filter_min_max(v, a, false); }},
      {"reject", [](const Value& v, const CallArgs& a) { return filter_select(v, a, false, false); }},
      {"rejectattr", [](const Value& v, const CallArgs& a) { return filter_select(v, a, true, false); }},
      {"replace", [](const Value& v, const CallArgs& a) {
         const Value count = arg(a, 2, "count", Value::none());
         return Value(replace(soft_str(v), arg(a, 0, "old", Value("")).str(), arg(a, 1, "new", Value("")).str(),
                              count.is_none() ? -1 : count.as_int()));
       }},
      {"reverse", [](const Value& v, const CallArgs&) {
         if (v.is_string()) {
           std::vector<std::string_view> chars = utf8_chars(v.as_string());
           std::string out;
           for (auto it = chars.rbegin(); it != chars.rend(); ++it) out += *it;
           return Value(std::move(out));
         }
         std::vector<Value> items = as_sequence(v);
         std::reverse(items.begin(), items.end());
         return Value::list(std::move(items));
       }},
      {"round", filter_round},
      {"safe", [](const Value& v, const CallArgs&) { return Value(soft_str(v)); }},
      {"select", [](const Value& v, const CallArgs& a) { return filter_select(v, a, false, true); }},
      {"selectattr", [](const Value& v, const CallArgs& a) { return filter_select(v, a, true, true); }},
      {"sort", filter_sort},
      {"string", [](const Value& v, const CallArgs&) { return Value(soft_str(v)); }},
      {"sum", [](const Value& v, const CallArgs& a) {
         const Value attribute = arg(a, 0, "attribute", Value::none());
         Value total = arg(a, 1, "start", Value(int64_t{0}));
         for (const Value& item : as_sequence(v)) {
           const Value x = attribute.is_none() ? item : attribute_path(item, attribute.str());
           if (!x.is_number() || !total.is_number()) throw Error("sum: can only add numbers");
           if (x.is_float() || total.is_float()) total = Value(total.as_float() + x.as_float());
           else {
             int64_t r = 0;
             if (__builtin_add_overflow(total.as_int(), x.as_int(), &r)) throw Error("integer overflow");
             total = Value(r);
           }
         }
         return total;
       }},
      {"title", [](const Value& v, const CallArgs&) { return Value(jinja_title(soft_str(v))); }},
      {"tojson", filter_tojson},
      {"trim", [](const Value& v, const CallArgs& a) {
         const Value chars = arg(a, 0, "chars", Value::none());
         const std::string set = chars.is_none() ? std::string() : chars.str();
         return Value(strip(soft_str(v), chars.is_none() ? nullptr : &set));
       }},
      {"unique", [](const Value& v, const CallArgs& a) {
         const bool case_sensitive = arg(a, 0, "case_sensitive", Value(false)).truthy();
         const Value attribute = arg(a, 1, "attribute", Value::none());
         std::vector<Value> out, seen;
         for (const Value& item : as_sequence(v)) {
           const Value k = sort_key(attribute.is_none() ? item : attribute_path(item, attribute.str()), case_sensitive);
           if (std::find(seen.begin(), seen.end(), k) != seen.end()) continue;
           seen.push_back(k);
           out.push_back(item);
         }
         return Value::list(std::move(out));
       }},
      {"upper", [](const Value& v, const CallArgs&) { return Value(upper(soft_str(v))); }},
      {"wordcount", [](const Value& v, const CallArgs&) {
         int64_t n = 0;
         bool in_word = false;
         const std::string s = soft_str(v);
         for (size_t pos = 0; pos < s.size();) {
           const bool w = tok::is_word_char(tok::next_code_point(s, pos));
           if (w && !in_word) ++n;
           in_word = w;
         }
         return Value(n);
       }},
  };
  return table;
}

const std::map<std::string, std::string, std::less<>>& filter_aliases() {
  static const std::map<std::string, std::string, std::less<>> aliases = {
      {"d", "default"}, {"e", "escape"}, {"forceescape", "escape"}};
  return aliases;
}

// ---- tests ----

using TestFn = bool (*)(const Value&, const CallArgs&);

const Value& test_arg(const CallArgs& a) {
  static const Value undefined;
  return a.positional.empty() ? undefined : a.positional[0];
}

const std::map<std::string, TestFn, std::less<>>& tests() {
  static const std::map<std::string, TestFn, std::less<>> table = {
      {"boolean", [](const Value& v, const CallArgs&) { return v.is_bool(); }},
      {"callable", [](const Value& v, const CallArgs&) { return v.is_function(); }},
      {"defined", [](const Value& v, const CallArgs&) { return !v.is_undefined(); }},
      {"divisibleby", [](const Value& v, const CallArgs& a) {
         const Value& n = test_arg(a);
         if (!v.is_number() || !n.is_number()) throw Error("divisibleby needs numbers");
         if (n.as_float() == 0) throw Error("integer division or modulo by zero");
         return v.is_float() || n.is_float() ? std::fmod(v.as_float(), n.as_float()) == 0 : v.as_int() % n.as_int() == 0;
       }},
      {"eq", [](const Value& v, const CallArgs& a) { return v == test_arg(a); }},
      {"escaped", [](const Value&, const CallArgs&) { return false; }},
      {"even", [](const Value& v, const CallArgs&) {
         if (!v.is_int() && !v.is_bool()) throw Error("even needs an integer");
         return v.as_int() % 2 == 0;
       }},
      {"false", [](const Value& v, const CallArgs&) { return v.is_bool() && !v.as_bool(); }},
      {"filter", [](const Value& v, const CallArgs&) { return v.is_string() && filter_exists(v.as_string()); }},
      {"float", [](const Value& v, const CallArgs&) { return v.is_float(); }},
      {"ge", [](const Value& v, const CallArgs& a) { return !Value::less(v, test_arg(a)); }},
      {"gt", [](const Value& v, const CallArgs& a) { return Value::less(test_arg(a), v); }},
      {"in", [](const Value& v, const CallArgs& a) {
         const Value& seq = test_arg(a);
         if (seq.is_string() && v.is_string()) return seq.as_string().find(v.as_string()) != std::string::npos;
         for (const Value& x : as_sequence(seq))
           if (x == v) return true;
         return false;
       }},
      {"integer", [](const Value& v, const CallArgs&) { return v.is_int(); }},
      {"iterable", [](const Value& v, const CallArgs&) {
         return v.is_undefined() || v.is_string() || v.is_list() || (v.is_dict() && !v.as_dict().is_namespace);
       }},
      {"le", [](const Value& v, const CallArgs& a) { return !Value::less(test_arg(a), v); }},
      {"lower", [](const Value& v, const CallArgs&) { return v.is_string() && is_lower(v.as_string()); }},
      {"lt", [](const Value& v, const CallArgs& a) { return Value::less(v, test_arg(a)); }},
      {"mapping", [](const Value& v, const CallArgs&) { return v.is_dict() && !v.as_dict().is_namespace; }},
      {"ne", [](const Value& v, const CallArgs& a) { return !(v == test_arg(a)); }},
      {"none", [](const Value& v, const CallArgs&) { return v.is_none(); }},
      {"number", [](const Value& v, const CallArgs&) { return v.is_number(); }},
      {"odd", [](const Value& v, const CallArgs&) {
         if (!v.is_int() && !v.is_bool()) throw Error("odd needs an integer");
         return v.as_int() % 2 != 0;
       }},
      {"sameas", [](const Value& v, const CallArgs& a) {
         const Value& o = test_arg(a);
         if (v.is_none() || v.is_bool() || v.is_undefined()) return v.kind() == o.kind() && v == o;
         return v.kind() == o.kind() && v == o && (v.is_int() || v.is_string());
       }},
      {"sequence", [](const Value& v, const CallArgs&) {
         return v.is_undefined() || v.is_string() || v.is_list() || (v.is_dict() && !v.as_dict().is_namespace);
       }},
      {"string", [](const Value& v, const CallArgs&) { return v.is_string(); }},
      {"test", [](const Value& v, const CallArgs&) { return v.is_string() && test_exists(v.as_string()); }},
      {"true", [](const Value& v, const CallArgs&) { return v.is_bool() && v.as_bool(); }},
      {"undefined", [](const Value& v, const CallArgs&) { return v.is_undefined(); }},
      {"upper", [](const Value& v, const CallArgs&) { return v.is_string() && is_upper(v.as_string()); }},
  };
  return table;
}

const std::map<std::string, std::string, std::less<>>& test_aliases() {
  static const std::map<std::string, std::string, std::less<>> aliases = {
      {"==", "eq"}, {"equalto", "eq"}, {"!=", "ne"}, {"<", "lt"}, {"lessthan", "lt"}, {"<=", "le"},
      {">", "gt"},  {"greaterthan", "gt"}, {">=", "ge"}};
  return aliases;
}

std::string_view resolve(std::string_view name, const std::map<std::string, std::string, std::less<>>& aliases) {
  const auto it = aliases.find(name);
  return it == aliases.end() ? name : std::string_view(it->second);
}

// ---- methods ----

const std::set<std::string, std::less<>>& unsafe_methods(const Value& v) {
  static const std::set<std::string, std::less<>> list = {"append", "clear", "extend", "insert", "pop",
                                                          "remove", "reverse", "sort"};
  static const std::set<std::string, std::less<>> dict = {"clear", "pop", "popitem", "setdefault", "update"};
  static const std::set<std::string, std::less<>> none;
  return v.is_list() ? list : v.is_dict() ? dict : none;
}

const std::set<std::string, std::less<>>& methods_of(const Value& v) {
  static const std::set<std::string, std::less<>> str = {
      "capitalize", "count",  "endswith", "find",    "format",  "index",      "isalnum",      "isalpha",
      "isdigit",    "islower", "isspace", "isupper", "join",    "lower",      "lstrip",       "removeprefix",
      "removesuffix", "replace", "rfind", "rsplit",  "rstrip",  "split",      "splitlines",   "startswith",
      "strip",      "title",  "upper",    "zfill"};
  static const std::set<std::string, std::less<>> list = {"count", "index"};
  static const std::set<std::string, std::less<>> dict = {"copy", "get", "items", "keys", "values"};
  static const std::set<std::string, std::less<>> none;
  if (v.is_string()) return str;
  if (v.is_list()) return list;
  if (v.is_dict() && !v.as_dict().is_namespace) return dict;
  return none;
}

Value str_method(const std::string& s, std::string_view name, const CallArgs& a) {
  const auto opt_chars = [&](size_t i, std::string& storage) -> const std::string* {
    const Value c = arg(a, i, "chars", Value::none());
    if (c.is_none()) return nullptr;
    storage = c.str();
    return &storage;
  };
  std::string storage;
  if (name == "strip") return Value(strip(s, opt_chars(0, storage)));
  if (name == "lstrip") return Value(lstrip(s, opt_chars(0, storage)));
  if (name == "rstrip") return Value(rstrip(s, opt_chars(0, storage)));
  if (name == "upper") return Value(upper(s));
  if (name == "lower") return Value(lower(s));
  if (name == "title") return Value(python_title(s));
  if (name == "capitalize") return Value(capitalize(s));
  if (name == "split" || name == "rsplit") {
    const Value sep = arg(a, 0, "sep", Value::none());
    const int64_t maxsplit = arg(a, 1, "maxsplit", Value(int64_t{-1})).as_int();
    std::vector<std::string> parts = split(s, sep.is_none() ? nullptr : &sep.as_string(), maxsplit, name == "rsplit");
    std::vector<Value> out;
    for (std::string& p : parts) out.emplace_back(std::move(p));
    return Value::list(std::move(out));
  }
  if (name == "splitlines") {
    std::vector<Value> out;
    for (std::string& p : splitlines(s)) out.emplace_back(std::move(p));
    return Value::list(std::move(out));
  }
  if (name == "startswith" || name == "endswith") {
    const Value what = arg(a, 0, "prefix", Value::none());
    std::vector<Value> options = what.is_list() ? what.as_list().items : std::vector<Value>{what};
    for (const Value& o : options) {
      if (!o.is_string()) throw Error(fmt::format("{} first arg must be str or a tuple of str", name));
      if (name == "startswith" ? s.starts_with(o.as_string()) : s.ends_with(o.as_string())) return Value(true);
    }
    return Value(false);
  }
  if (name == "replace") {
    return Value(replace(s, arg(a, 0, "old", Value("")).str(), arg(a, 1, "new", Value("")).str(),
                         arg(a, 2, "count", Value(int64_t{-1})).as_int()));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "count") {
    const std::string sub = arg(a, 0, "sub", Value("")).str();
    if (name == "count") return Value(count(s, sub));
    const int64_t at = name == "rfind" ? rfind_chars(s, sub) : find_chars(s, sub);
    if (at < 0 && name == "index") throw Error("substring not found");
    return Value(at);
  }
  if (name == "join") {
    std::string out;
    bool first = true;
    for (const Value& item : as_sequence(arg(a, 0, "iterable", Value::none()))) {
      if (!item.is_string()) throw Error(fmt::format("sequence item: expected str instance, {} found", item.type_name()));
      if (!first) out += s;
      first = false;
      out += item.as_string();
    }
    return Value(std::move(out));
  }
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace")
    return Value(char_class_all(s, name));
  if (name == "islower") return Value(is_lower(s));
  if (name == "isupper") return Value(is_upper(s));
  if (name == "removeprefix") {
    const std::string p = arg(a, 0, "prefix", Value("")).str();
    return Value(s.starts_with(p) ? s.substr(p.size()) : s);
  }
  if (name == "removesuffix") {
    const std::string p = arg(a, 0, "suffix", Value("")).str();
    return Value(!p.empty() && s.ends_with(p) ? s.substr(0, s.size() - p.size()) : s);
  }
  if (name == "zfill") {
    const int64_t width = arg(a, 0, "width", Value(int64_t{0})).as_int();
    const auto n = static_cast<int64_t>(utf8_chars(s).size());
    if (width <= n) return Value(s);
    const size_t sign = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
    return Value(s.substr(0, sign) + std::string(static_cast<size_t>(std::min<int64_t>(width - n, 1 << 20)), '0') +
                 s.substr(sign));
  }
  if (name == "format") return Value(format(s, a));
  throw Error(fmt::format("'str' object has no attribute '{}'", name));
}

}  // namespace

bool filter_exists(std::string_view name) {
  return filters().contains(resolve(name, filter_aliases()));
}

bool test_exists(std::string_view name) { return tests().contains(resolve(name, test_aliases())); }

Value apply_filter(std::string_view name, const Value& value, const CallArgs& args) {
  const auto it = filters().find(resolve(name, filter_aliases()));
  if (it == filters().end()) throw Error(fmt::format("no filter named '{}'", name));
  return it->second(value, args);
}

bool apply_test(std::string_view name, const Value& value, const CallArgs& args) {
  const auto it = tests().find(resolve(name, test_aliases()));
  if (it == tests().end()) throw Error(fmt::format("no test named '{}'", name));
  return it->second(value, args);
}

bool is_method(const Value& object, std::string_view name) {
  return methods_of(object).contains(name) || unsafe_methods(object).contains(name);
}

std::optional<Value> call_method(const Value& object, std::string_view name, const CallArgs& args) {
  if (unsafe_methods(object).contains(name))
    throw Error(fmt::format("access to attribute '{}' of '{}' object is unsafe.", name, object.type_name()));
  if (!methods_of(object).contains(name)) return std::nullopt;
  if (object.is_string()) return str_method(object.as_string(), name, args);
  if (object.is_list()) {
    const Value x = arg(args, 0, "value", Value::none());
    const auto& items = object.as_list().items;
    if (name == "count") return Value(static_cast<int64_t>(std::count(items.begin(), items.end(), x)));
    const auto it = std::find(items.begin(), items.end(), x);
    if (it == items.end()) throw Error(fmt::format("{} is not in list", x.repr()));
    return Value(static_cast<int64_t>(it - items.begin()));
  }
  const Dict& d = object.as_dict();
  if (name == "get") {
    const Value* v = d.find_key(arg(args, 0, "key", Value::none()));
    return v ? *v : arg(args, 1, "default", Value::none());
  }
  if (name == "copy") return object;
  std::vector<Value> out;
  for (const auto& [k, v] : d.items) {
    if (name == "keys") out.push_back(k);
    else if (name == "values") out.push_back(v);
    else out.push_back(Value::list({k, v}, true));
  }
  return Value::list(std::move(out));
}

Value get_attribute(const Value& object, std::string_view name) {
  if (is_method(object, name)) {
    const Value receiver = object;
    const std::string method(name);
    return make_function(method, [receiver, method](const CallArgs& a) { return *call_method(receiver, method, a); });
  }
  if (object.is_dict())
    if (const Value* v = object.as_dict().find(name)) return *v;
  return Value::undefined(fmt::format("'{}' has no attribute '{}'", object_type(object), name));
}

Value get_item(const Value& object, const Value& key) {
  if (object.is_dict() && !object.as_dict().is_namespace) {
    if (const Value* v = object.as_dict().find_key(key)) return *v;
  } else if ((object.is_list() || object.is_string()) && (key.is_int() || key.is_bool())) {
    int64_t i = key.as_int();
    if (object.is_list()) {
      const auto n = static_cast<int64_t>(object.as_list().items.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return object.as_list().items[static_cast<size_t>(i)];
    } else {
      const std::vector<std::string_view> chars = utf8_chars(object.as_string());
      const auto n = static_cast<int64_t>(chars.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return Value(std::string(chars[static_cast<size_t>(i)]));
    }
    return Value::undefined(fmt::format("{} has no element {}", object_type(object), key.repr()));
  }
  if (key.is_string()) return get_attribute(object, key.as_string());
  return Value::undefined(fmt::format("{} has no element {}", object_type(object), key.repr()));
}

Value global_function(std::string_view name) {
  if (name == "raise_exception")
    return make_function("raise_exception", [](const CallArgs& a) -> Value {
      throw Error(arg(a, 0, "message", Value("")).str(), /*raised=*/true);
    });
  if (name == "range")
    return make_function("range", [](const CallArgs& a) -> Value {
      for (const Value& v : a.positional)
        if (!v.is_int() && !v.is_bool()) throw Error(fmt::format("'{}' object cannot be interpreted as an integer", v.type_name()));
      int64_t start = 0, stop = 0, step = 1;
      if (a.positional.size() == 1) stop = a.positional[0].as_int();
      else if (a.positional.size() == 2 || a.positional.size() == 3) {
        start = a.positional[0].as_int();
        stop = a.positional[1].as_int();
        if (a.positional.size() == 3) step = a.positional[2].as_int();
      } else {
        throw Error("range expected 1 to 3 arguments");
      }
      if (step == 0) throw Error("range() arg 3 must not be zero");
      const long double count = step > 0 ? std::ceil((static_cast<long double>(stop) - start) / step)
                                         : std::ceil((static_cast<long double>(start) - stop) / -step);
      if (count > kMaxRange)
        throw Error("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
      std::vector<Value> out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.emplace_back(i);
      return Value::list(std::move(out));
    });
  if (name == "namespace" || name == "dict")
    return make_function(std::string(name), [is_namespace = name == "namespace"](const CallArgs& a) -> Value {
      auto d = std::make_shared<Dict>();
      d->is_namespace = is_namespace;
      for (const Value& p : a.positional) {
        if (p.is_dict()) {
          for (const auto& [k, v] : p.as_dict().items) d->set(k, v);
        } else if (p.is_list()) {
          for (const Value& pair : p.as_list().items) {
            if (!pair.is_list() || pair.as_list().items.size() != 2) throw Error("dict: sequence elements must be pairs");
            d->set(pair.as_list().items[0], pair.as_list().items[1]);
          }
        } else {
          throw Error(fmt::format("'{}' object is not iterable", p.type_name()));
        }
      }
      for (const auto& [k, v] : a.keyword) d->set(Value(k), v);
      if (is_namespace)
        for (const auto& [k, v] : d->items)
          if (k.is_string() && k.as_string().starts_with('_'))
            throw Error(fmt::format("chat templates cannot store underscore-prefixed attributes on a namespace ('{}')",
                                    k.as_string()));
      return Value(std::move(d));
    });
  if (name == "strftime_now")
    return make_function("strftime_now", [](const CallArgs& a) -> Value {
      const std::string format = arg(a, 0, "format", Value("")).str();
      const std::time_t now = std::time(nullptr);
      std::tm local{};
      localtime_r(&now, &local);
      char buf[512];
      // The format is the template's (Python's strftime takes it the same way).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
      const size_t n = std::strftime(buf, sizeof buf, format.c_str(), &local);
#pragma GCC diagnostic pop
      return Value(std::string(buf, n));
    });
  return Value::undefined();
}

}  // namespace kvant::jinja
