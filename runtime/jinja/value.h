// Values of kvant's Jinja interpreter, with Python's semantics where chat templates
// can see them: truthiness, equality, ordering, str() and repr() (what `{{ x }}`
// prints), and JSON (transformers' `tojson` filter is json.dumps).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace kvant::jinja {

// A template error: a syntax error, a type error at render time, or the template's own
// raise_exception(). `raised` marks the last kind (the message is the template's).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, bool raised = false) : std::runtime_error(message), raised_(raised) {}
  bool raised() const { return raised_; }

 private:
  bool raised_;
};

class Value;
struct Function;

struct List {
  std::vector<Value> items;
  bool tuple = false;
};

// Insertion-ordered, as Python's dict. Namespaces (namespace()) are dicts whose
// entries `{% set ns.x = ... %}` may change; every other container is immutable,
// as in transformers' ImmutableSandboxedEnvironment.
struct Dict {
  std::vector<std::pair<Value, Value>> items;
  bool is_namespace = false;
  const Value* find(std::string_view key) const;
  const Value* find_key(const Value& key) const;
  void set(Value key, Value value);
};

class Value {
 public:
  enum class Kind { undefined, none, boolean, integer, floating, string, list, dict, function };

  Value() = default;  // undefined
  static Value undefined(std::string hint = {}) {
    Value v;
    v.data_ = Undefined{std::move(hint)};
    return v;
  }
  static Value none() {
    Value v;
    v.data_ = None{};
    return v;
  }
  Value(bool b) : data_(b) {}  // NOLINT(google-explicit-constructor)
  Value(int64_t i) : data_(i) {}  // NOLINT
  Value(int i) : data_(static_cast<int64_t>(i)) {}  // NOLINT
  Value(double d) : data_(d) {}  // NOLINT
  Value(std::string s) : data_(std::move(s)) {}  // NOLINT
  Value(const char* s) : data_(std::string(s)) {}  // NOLINT
  Value(std::shared_ptr<const List> l) : data_(std::move(l)) {}  // NOLINT
  Value(std::shared_ptr<Dict> d) : data_(std::move(d)) {}  // NOLINT
  Value(std::shared_ptr<const Function> f) : data_(std::move(f)) {}  // NOLINT

  static Value list(std::vector<Value> items, bool tuple = false);
  static Value dict(std::vector<std::pair<Value, Value>> items);
  static Value from_json(const nlohmann::ordered_json& j);

  Kind kind() const { return static_cast<Kind>(data_.index()); }
  bool is_undefined() const { return kind() == Kind::undefined; }
  bool is_none() const { return kind() == Kind::none; }
  bool is_bool() const { return kind() == Kind::boolean; }
  bool is_int() const { return kind() == Kind::integer; }
  bool is_float() const { return kind() == Kind::floating; }
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_string() const { return kind() == Kind::string; }
  bool is_list() const { return kind() == Kind::list; }
  bool is_dict() const { return kind() == Kind::dict; }
  bool is_function() const { return kind() == Kind::function; }

  bool as_bool() const { return std::get<bool>(data_); }
  int64_t as_int() const { return is_bool() ? (as_bool() ? 1 : 0) : std::get<int64_t>(data_); }
  double as_float() const { return is_float() ? std::get<double>(data_) : static_cast<double>(as_int()); }
  const std::string& as_string() const { return std::get<std::string>(data_); }
  const List& as_list() const { return *std::get<std::shared_ptr<const List>>(data_); }
  const Dict& as_dict() const { return *std::get<std::shared_ptr<Dict>>(data_); }
  Dict& mutable_dict() const { return *std::get<std::shared_ptr<Dict>>(data_); }
  const Function& as_function() const { return *std::get<std::shared_ptr<const Function>>(data_); }
  const std::string& undefined_hint() const { return std::get<Undefined>(data_).hint; }

  bool truthy() const;
  // Python's type name, for error messages ("str", "int", "list", "dict", ...).
  std::string type_name() const;
  // What {{ value }} prints: Python's str(); undefined prints nothing.
  std::string str() const;
  // Python's repr().
  std::string repr() const;
  // json.dumps(value, ensure_ascii, indent, separators, sort_keys); indent < 0 is None.
  std::string to_json(bool ensure_ascii, int indent, const std::string& item_sep, const std::string& key_sep,
                      bool sort_keys) const;

  // Python ==, and <, which fails (Error) on types Python cannot order.
  friend bool operator==(const Value& a, const Value& b);
  static bool less(const Value& a, const Value& b);
  // Container length (str in characters); Error for values with no length.
  size_t length() const;
  // The items a for-loop over this value visits (dict: keys, str: characters).
  std::vector<Value> iterate() const;

 private:
  struct Undefined {
    std::string hint;  // why it is undefined, for the error when it is used
  };
  struct None {};
  std::variant<Undefined, None, bool, int64_t, double, std::string, std::shared_ptr<const List>,
               std::shared_ptr<Dict>, std::shared_ptr<const Function>>
      data_;
};

// A callable value: a built-in function or a macro.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
  const Value* get(size_t position, std::string_view name) const;
};
struct Function {
  std::string name;
  std::function<Value(const CallArgs&)> call;
};

// Python float repr (shortest round-trip digits, 1e+16 style exponents).
std::string python_float_repr(double d);
// Characters of a UTF-8 string (Python indexes strings by character).
std::vector<std::string_view> utf8_chars(std::string_view s);
// Python's str.isspace() for one character.
bool python_is_space(char32_t c);

}  // namespace kvant::jinja
