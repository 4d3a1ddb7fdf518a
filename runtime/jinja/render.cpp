// The tree-walking interpreter behind jinja::Template::render.
#include <fmt/format.h>

#include <cmath>

#include "runtime/jinja/builtins.h"
#include "runtime/jinja/template.h"
#include "runtime/tokenizer/unicode.h"

namespace kvant::jinja {

namespace {

constexpr size_t kMaxSteps = 10'000'000;  // real chat templates take thousands
constexpr size_t kMaxOutput = size_t{256} << 20;
constexpr int kMaxCallDepth = 64;

// Variables: a for-loop iteration and a macro call each get a scope of their own, as
// in Jinja (a `set` inside a loop body is gone at the next iteration).
struct LoopState {
  const std::vector<Value>* items;
  int64_t index;
};

struct Scope {
  Scope* parent = nullptr;
  std::vector<std::pair<std::string, Value>> vars;
  const LoopState* loop = nullptr;  // set in a for-loop iteration: `loop` is built on use
  const LoopState* find_loop() const {
    for (const Scope* s = this; s; s = s->parent)
      if (s->loop) return s->loop;
    return nullptr;
  }
  const Value* find(std::string_view name) const {
    for (const Scope* s = this; s; s = s->parent)
      for (auto it = s->vars.rbegin(); it != s->vars.rend(); ++it)
        if (it->first == name) return &it->second;
    return nullptr;
  }
  void set(const std::string& name, Value v) {
    for (auto& [n, value] : vars)
      if (n == name) {
        value = std::move(v);
        return;
      }
    vars.emplace_back(name, std::move(v));
  }
};

[[noreturn]] void undefined_error(const Value& v) {
  throw Error(v.undefined_hint().empty() ? "a value is undefined" : v.undefined_hint());
}

void check_overflow(bool overflow) {
  if (overflow) throw Error("integer overflow (kvant's templates compute with 64-bit integers)");
}

int64_t floor_div(int64_t a, int64_t b) {
  if (b == 0) throw Error("integer division or modulo by zero");
  if (a == INT64_MIN && b == -1) throw Error("integer overflow (kvant's templates compute with 64-bit integers)");
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

Value repeat(const Value& seq, int64_t n) {
  if (n <= 0) return seq.is_string() ? Value(std::string()) : Value::list({}, seq.as_list().tuple);
  if (seq.is_string()) {
    if (seq.as_string().size() * static_cast<size_t>(n) > kMaxOutput) throw Error("string repetition is too large");
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.as_string();
    return Value(std::move(out));
  }
  if (seq.as_list().items.size() * static_cast<size_t>(n) > 10'000'000) throw Error("list repetition is too large");
  std::vector<Value> items;
  for (int64_t i = 0; i < n; ++i) items.insert(items.end(), seq.as_list().items.begin(), seq.as_list().items.end());
  return Value::list(std::move(items), seq.as_list().tuple);
}

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  const auto type_error = [&] {
    throw Error(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, a.type_name(), b.type_name()));
  };
  if (a.is_number() && b.is_number()) {
    if (op == "/") {
      if (b.as_float() == 0) throw Error("division by zero");
      return Value(a.as_float() / b.as_float());
    }
    if (a.is_float() || b.is_float()) {
      const double x = a.as_float(), y = b.as_float();
      if (op == "+") return Value(x + y);
      if (op == "-") return Value(x - y);
      if (op == "*") return Value(x * y);
      if (op == "**") return Value(std::pow(x, y));
      if (y == 0) throw Error("float division by zero");
      if (op == "//") return Value(std::floor(x / y));
      if (op == "%") {
        double m = std::fmod(x, y);
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        return Value(m);
      }
    }
    const int64_t x = a.as_int(), y = b.as_int();
    int64_t r = 0;
    if (op == "+") {
      check_overflow(__builtin_add_overflow(x, y, &r));
      return Value(r);
    }
    if (op == "-") {
      check_overflow(__builtin_sub_overflow(x, y, &r));
      return Value(r);
    }
    if (op == "*") {
      check_overflow(__builtin_mul_overflow(x, y, &r));
      return Value(r);
    }
    if (op == "//") return Value(floor_div(x, y));
    if (op == "%") {
      if (y == 0) throw Error("integer division or modulo by zero");
      if (y == -1) return Value(int64_t{0});
      int64_t m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return Value(m);
    }
    if (op == "**") {
      if (y < 0) return Value(std::pow(static_cast<double>(x), static_cast<double>(y)));
      int64_t result = 1, base = x, e = y;
      while (e > 0) {
        if (e & 1) check_overflow(__builtin_mul_overflow(result, base, &result));
        e >>= 1;
        if (e > 0) check_overflow(__builtin_mul_overflow(base, base, &base));
      }
      return Value(result);
    }
  }
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value(a.as_string() + b.as_string());
    if (a.is_list() && b.is_list() && a.as_list().tuple == b.as_list().tuple) {
      std::vector<Value> items = a.as_list().items;
      items.insert(items.end(), b.as_list().items.begin(), b.as_list().items.end());
      return Value::list(std::move(items), a.as_list().tuple);
    }
    if (a.is_string()) throw Error(fmt::format("can only concatenate str (not \"{}\") to str", b.type_name()));
  }
  if (op == "*") {
    if ((a.is_string() || a.is_list()) && (b.is_int() || b.is_bool())) return repeat(a, b.as_int());
    if ((b.is_string() || b.is_list()) && (a.is_int() || a.is_bool())) return repeat(b, a.as_int());
  }
  if (op == "%" && a.is_string()) throw Error("printf-style string formatting ('%') is not supported");
  type_error();
  return Value();
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::undefined: return false;
    case Value::Kind::string:
      if (!item.is_string())
        throw Error(fmt::format("'in <string>' requires string as left operand, not {}", item.type_name()));
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::list:
      for (const Value& v : container.as_list().items)
        if (v == item) return true;
      return false;
    case Value::Kind::dict:
      if (container.as_dict().is_namespace) break;
      return container.as_dict().find_key(item) != nullptr;
    default: break;
  }
  throw Error(fmt::format("argument of type '{}' is not iterable", container.type_name()));
}

bool compare(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return a == b;
  if (op == "!=") return !(a == b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  if (op == "<") return Value::less(a, b);
  if (op == ">") return Value::less(b, a);
  if (op == "<=") return Value::less(a, b) || a == b;
  return Value::less(b, a) || a == b;  // >=
}

// Python slicing of a str (by character) or a list.
Value slice(const Value& seq, const Value& start_v, const Value& stop_v, const Value& step_v) {
  if (seq.is_undefined()) undefined_error(seq);
  const auto index_of = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_undefined() || v.is_none()) return std::nullopt;
    if (!v.is_int() && !v.is_bool())
      throw Error(fmt::format("slice {} must be an integer or None, not {}", what, v.type_name()));
    return v.as_int();
  };
  const int64_t step = index_of(step_v, "step").value_or(1);
  if (step == 0) throw Error("slice step cannot be zero");
  std::vector<std::string_view> chars;
  int64_t n = 0;
  if (seq.is_string()) {
    chars = utf8_chars(seq.as_string());
    n = static_cast<int64_t>(chars.size());
  } else if (seq.is_list()) {
    n = static_cast<int64_t>(seq.as_list().items.size());
  } else {
    throw Error(fmt::format("'{}' object is not subscriptable", seq.type_name()));
  }
  const auto clamp = [&](std::optional<int64_t> v, int64_t fallback) {
    if (!v) return fallback;
    int64_t i = *v < 0 ? *v + n : *v;
    if (step > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t start = clamp(index_of(start_v, "start"), step > 0 ? 0 : n - 1);
  const int64_t stop = clamp(index_of(stop_v, "stop"), step > 0 ? n : -1);
  std::vector<int64_t> picks;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) picks.push_back(i);
  if (seq.is_string()) {
    std::string out;
    for (int64_t i : picks) out += chars[static_cast<size_t>(i)];
    return Value(std::move(out));
  }
  std::vector<Value> items;
  for (int64_t i : picks) items.push_back(seq.as_list().items[static_cast<size_t>(i)]);
  return Value::list(std::move(items), seq.as_list().tuple);
}

class Renderer {
 public:
  explicit Renderer(const Value& context) : context_(context) {}

  std::string run(const Body& body) {
    Scope top;
    top_ = &top;
    std::string out;
    exec(body, top, out);
    return out;
  }

 private:
  enum class Flow { normal, break_, continue_ };

  void step() {
    if (++steps_ > kMaxSteps) throw Error("the template takes too many steps to render (is it looping forever?)");
  }

  static void append(std::string& out, std::string_view s) {
    if (out.size() + s.size() > kMaxOutput) throw Error("the template output is too large");
    out.append(s);
  }

  Flow exec(const Body& body, Scope& scope, std::string& out) {
    for (const StmtPtr& s : body) {
      step();
      switch (s->kind) {
        case Stmt::Kind::text: append(out, s->text); break;
        case Stmt::Kind::print: append(out, eval(*s->expr, scope).str()); break;
        case Stmt::Kind::if_: {
          bool taken = false;
          for (const auto& [cond, branch] : s->branches) {
            if (eval(*cond, scope).truthy()) {
              taken = true;
              if (const Flow f = exec(branch, scope, out); f != Flow::normal) return f;
              break;
            }
          }
          if (!taken)
            if (const Flow f = exec(s->otherwise, scope, out); f != Flow::normal) return f;
          break;
        }
        case Stmt::Kind::for_: exec_for(*s, scope, out); break;
        case Stmt::Kind::set: exec_set(*s, scope); break;
        case Stmt::Kind::set_block: {
          std::string captured;
          exec(s->body, scope, captured);
          scope.set(s->targets[0], apply_filters(*s, Value(std::move(captured)), scope));
          break;
        }
        case Stmt::Kind::macro: define_macro(*s, scope); break;
        case Stmt::Kind::filter_block: {
          std::string captured;
          if (const Flow f = exec(s->body, scope, captured); f != Flow::normal) {
            append(out, captured);
            return f;
          }
          append(out, apply_filters(*s, Value(std::move(captured)), scope).str());
          break;
        }
        case Stmt::Kind::break_: return Flow::break_;
        case Stmt::Kind::continue_: return Flow::continue_;
      }
    }
    return Flow::normal;
  }

  Value apply_filters(const Stmt& s, Value value, Scope& scope) {
    for (const ExprPtr& f : s.filters) value = eval_filter_chain(*f, std::move(value), scope);
    return value;
  }

  // A filter chain parsed with no object: its innermost filter applies to `input`.
  Value eval_filter_chain(const Expr& e, Value input, Scope& scope) {
    Value inner = e.object ? eval_filter_chain(*e.object, std::move(input), scope) : std::move(input);
    return apply_filter(e.name, inner, eval_args(e, scope));
  }

  void bind_targets(const Stmt& s, const Value& item, Scope& scope) {
    if (!s.unpack) {
      scope.set(s.targets[0], item);
      return;
    }
    const std::vector<Value> parts = item.iterate();
    if (parts.size() != s.targets.size())
      throw Error(fmt::format("{} values to unpack (expected {}, got {})",
                              parts.size() > s.targets.size() ? "too many" : "not enough", s.targets.size(),
                              parts.size()));
    for (size_t i = 0; i < parts.size(); ++i) scope.set(s.targets[i], parts[i]);
  }

  void exec_for(const Stmt& s, Scope& scope, std::string& out) {
    const Value iterable = eval(*s.expr, scope);
    if (iterable.is_none()) throw Error("'NoneType' object is not iterable");
    std::vector<Value> items = iterable.iterate();
    if (s.condition) {
      std::vector<Value> kept;
      for (Value& item : items) {
        Scope filter_scope{&scope, {}};
        bind_targets(s, item, filter_scope);
        if (eval(*s.condition, filter_scope).truthy()) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      exec(s.otherwise, scope, out);
      return;
    }
    const auto n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      step();
      Scope iteration{&scope, {}};
      const LoopState state{&items, i};
      iteration.loop = &state;
      bind_targets(s, items[static_cast<size_t>(i)], iteration);
      const Flow f = exec(s.body, iteration, out);
      if (f == Flow::break_) break;
    }
  }

  static Value loop_object(const std::vector<Value>& items, int64_t i) {
    const auto n = static_cast<int64_t>(items.size());
    auto cycle = std::make_shared<Function>();
    cycle->name = "loop.cycle";
    cycle->call = [i](const CallArgs& args) -> Value {
      if (args.positional.empty()) throw Error("no items for cycling given");
      return args.positional[static_cast<size_t>(i) % args.positional.size()];
    };
    std::vector<std::pair<Value, Value>> d = {
        {Value("index"), Value(i + 1)},
        {Value("index0"), Value(i)},
        {Value("revindex"), Value(n - i)},
        {Value("revindex0"), Value(n - i - 1)},
        {Value("first"), Value(i == 0)},
        {Value("last"), Value(i == n - 1)},
        {Value("length"), Value(n)},
        {Value("depth"), Value(int64_t{1})},
        {Value("depth0"), Value(int64_t{0})},
        {Value("previtem"), i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item")},
        {Value("nextitem"), i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item")},
        {Value("cycle"), Value(std::shared_ptr<const Function>(std::move(cycle)))},
    };
    return Value::dict(std::move(d));
  }

  void exec_set(const Stmt& s, Scope& scope) {
    Value value = eval(*s.expr, scope);
    if (!s.attribute.empty()) {
      const Value* ns = scope.find(s.targets[0]);
      if (!ns && context_.is_dict()) ns = context_.as_dict().find(s.targets[0]);
      if (!ns || !ns->is_dict() || !ns->as_dict().is_namespace)
        throw Error(fmt::format("cannot assign attribute on non-namespace object '{}'", s.targets[0]));
      if (s.attribute.starts_with('_'))
        throw Error(fmt::format("chat templates cannot store underscore-prefixed attributes on a namespace ('{}')",
                                s.attribute));
      ns->mutable_dict().set(Value(s.attribute), std::move(value));
      return;
    }
    bind_targets(s, value, scope);
  }

  void define_macro(const Stmt& s, Scope& scope) {
    auto fn = std::make_shared<Function>();
    fn->name = s.targets[0];
    const Stmt* macro = &s;
    fn->call = [this, macro](const CallArgs& args) -> Value {
      if (++call_depth_ > kMaxCallDepth) throw Error("macro calls nest too deeply");
      Scope local{top_, {}};
      if (args.positional.size() > macro->params.size())
        throw Error(fmt::format("macro '{}' takes not more than {} argument(s)", macro->targets[0], macro->params.size()));
      for (size_t i = 0; i < macro->params.size(); ++i) {
        const auto& [name, def] = macro->params[i];
        if (const Value* v = args.get(i, name)) local.set(name, *v);
        else if (def) local.set(name, eval(*def, local));
        else local.set(name, Value::undefined(fmt::format("parameter '{}' was not provided", name)));
      }
      for (const auto& [k, v] : args.keyword) {
        bool known = false;
        for (const auto& p : macro->params) known = known || p.first == k;
        if (!known) throw Error(fmt::format("macro '{}' takes no keyword argument '{}'", macro->targets[0], k));
      }
      std::string out;
      exec(macro->body, local, out);
      --call_depth_;
      return Value(std::move(out));
    };
    scope.set(s.targets[0], Value(std::shared_ptr<const Function>(std::move(fn))));
  }

  CallArgs eval_args(const Expr& e, Scope& scope) {
    CallArgs args;
    for (const ExprPtr& a : e.items) args.positional.push_back(eval(*a, scope));
    for (const auto& [k, v] : e.keyword) args.keyword.emplace_back(k, eval(*v, scope));
    return args;
  }

  Value lookup(const std::string& name, Scope& scope) {
    if (const Value* v = scope.find(name)) return *v;
    if (name == "loop")
      if (const LoopState* loop = scope.find_loop()) return loop_object(*loop->items, loop->index);
    if (context_.is_dict())
      if (const Value* v = context_.as_dict().find(name)) return *v;
    Value g = global_function(name);
    if (!g.is_undefined()) return g;
    return Value::undefined(fmt::format("'{}' is undefined", name));
  }

  Value call(const Expr& e, Scope& scope) {
    const Expr& callee = *e.object;
    if (callee.kind == Expr::Kind::getattr) {
      const Value receiver = eval(*callee.object, scope);
      if (receiver.is_undefined()) undefined_error(receiver);
      if (is_method(receiver, callee.name)) return *call_method(receiver, callee.name, eval_args(e, scope));
      const Value fn = get_attribute(receiver, callee.name);
      if (fn.is_function()) return fn.as_function().call(eval_args(e, scope));
      if (fn.is_undefined()) undefined_error(fn);
      throw Error(fmt::format("'{}' object is not callable", fn.type_name()));
    }
    const Value fn = eval(callee, scope);
    if (fn.is_function()) return fn.as_function().call(eval_args(e, scope));
    if (fn.is_undefined()) undefined_error(fn);
    throw Error(fmt::format("'{}' object is not callable", fn.type_name()));
  }

  Value eval(const Expr& e, Scope& scope) {
    step();
    switch (e.kind) {
      case Expr::Kind::constant: return e.value;
      case Expr::Kind::name: return lookup(e.name, scope);
      case Expr::Kind::list: {
        std::vector<Value> items;
        for (const ExprPtr& i : e.items) items.push_back(eval(*i, scope));
        return Value::list(std::move(items), e.tuple);
      }
      case Expr::Kind::dict: {
        auto d = std::make_shared<Dict>();
        for (size_t i = 0; i + 1 < e.items.size(); i += 2) d->set(eval(*e.items[i], scope), eval(*e.items[i + 1], scope));
        return Value(std::move(d));
      }
      case Expr::Kind::getattr: {
        const Value obj = eval(*e.object, scope);
        if (obj.is_undefined()) undefined_error(obj);
        return get_attribute(obj, e.name);
      }
      case Expr::Kind::getitem: {
        const Value obj = eval(*e.object, scope);
        if (obj.is_undefined()) undefined_error(obj);
        return get_item(obj, eval(*e.items[0], scope));
      }
      case Expr::Kind::slice: {
        if (!e.object) throw Error("a slice outside a subscript");
        const Value obj = eval(*e.object, scope);
        Value parts[3];
        for (size_t i = 0; i < 3 && i < e.items.size(); ++i)
          if (e.items[i]) parts[i] = eval(*e.items[i], scope);
        return slice(obj, parts[0], parts[1], parts[2]);
      }
      case Expr::Kind::call: return call(e, scope);
      case Expr::Kind::filter: return apply_filter(e.name, eval(*e.object, scope), eval_args(e, scope));
      case Expr::Kind::test: {
        const bool r = apply_test(e.name, eval(*e.object, scope), eval_args(e, scope));
        return Value(e.negated ? !r : r);
      }
      case Expr::Kind::negate:
      case Expr::Kind::plus: {
        const Value v = eval(*e.object, scope);
        if (v.is_undefined()) undefined_error(v);
        if (!v.is_number())
          throw Error(fmt::format("bad operand type for unary {}: '{}'", e.kind == Expr::Kind::negate ? '-' : '+',
                                  v.type_name()));
        if (e.kind == Expr::Kind::plus) return v.is_bool() ? Value(v.as_int()) : v;
        if (v.is_float()) return Value(-v.as_float());
        if (v.as_int() == INT64_MIN) throw Error("integer overflow (kvant's templates compute with 64-bit integers)");
        return Value(-v.as_int());
      }
      case Expr::Kind::logical_not: return Value(!eval(*e.object, scope).truthy());
      case Expr::Kind::binary: {
        if (e.name == "and" || e.name == "or") {
          Value left = eval(*e.items[0], scope);
          if (left.truthy() == (e.name == "or")) return left;
          return eval(*e.items[1], scope);
        }
        const Value left = eval(*e.items[0], scope);
        return arithmetic(e.name, left, eval(*e.items[1], scope));
      }
      case Expr::Kind::concat: {
        std::string s;
        for (const ExprPtr& i : e.items) {
          s += eval(*i, scope).str();
          if (s.size() > kMaxOutput) throw Error("a string is too large");
        }
        return Value(std::move(s));
      }
      case Expr::Kind::compare: {
        Value left = eval(*e.object, scope);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.items[i], scope);
          if (!compare(e.ops[i], left, right)) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::conditional: {
        if (eval(*e.items[1], scope).truthy()) return eval(*e.items[0], scope);
        if (e.items[2]) return eval(*e.items[2], scope);
        return Value::undefined("the inline if expression evaluated to false and no else section was defined");
      }
    }
    return Value();
  }

  const Value& context_;
  Scope* top_ = nullptr;
  size_t steps_ = 0;
  int call_depth_ = 0;
};

}  // namespace

Template Template::parse(std::string_view source) {
  if (const size_t bad = tok::find_invalid_utf8(source); bad != std::string_view::npos)
    throw Error(fmt::format("the template is not valid UTF-8 (byte offset {})", bad));
  Template t;
  t.body_ = std::make_shared<const Body>(jinja::parse(source));
  return t;
}

std::string Template::render(const Value& context) const { return Renderer(context).run(*body_); }

}  // namespace kvant::jinja
