// The Jinja parser: a recursive descent over the lexer's tokens that follows Jinja's
// own grammar and operator precedence (jinja2/parser.py), e.g. `a + b | trim` filters
// only b, and `~` binds tighter than `+`.
#include <fmt/format.h>

#include <set>

#include "runtime/jinja/ast.h"
#include "runtime/jinja/builtins.h"
#include "runtime/jinja/lexer.h"

namespace kvant::jinja {

namespace {

constexpr int kMaxNesting = 200;  // expression and block depth (a hostile template must not blow the stack)

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Body parse_template() {
    Body body = parse_body({});
    if (cur().type != Token::Type::eof) fail("unexpected tag");
    return body;
  }

 private:
  // ---- token stream ----
  const Token& cur() const { return t_[i_]; }
  const Token& look(size_t n = 1) const { return t_[std::min(i_ + n, t_.size() - 1)]; }
  void next() {
    if (i_ + 1 < t_.size()) ++i_;
  }
  bool is_op(std::string_view op) const { return cur().type == Token::Type::op && cur().value == op; }
  bool is_name(std::string_view name) const { return cur().type == Token::Type::name && cur().value == name; }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(std::string_view name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }
  [[noreturn]] void fail(const std::string& message) const {
    throw Error(fmt::format("line {}: {} (at {})", cur().line, message, describe(cur())));
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Token::Type::text: return "template text";
      case Token::Type::variable_begin: return "'{{'";
      case Token::Type::variable_end: return "'}}'";
      case Token::Type::block_begin: return "'{%'";
      case Token::Type::block_end: return "'%}'";
      case Token::Type::eof: return "end of template";
      case Token::Type::string: return "a string";
      default: return "'" + t.value + "'";
    }
  }
  void expect_op(std::string_view op) {
    if (!skip_op(op)) fail(fmt::format("expected '{}'", op));
  }
  std::string expect_name() {
    if (cur().type != Token::Type::name) fail("expected a name");
    std::string n = cur().value;
    next();
    return n;
  }
  void expect_block_end() {
    if (cur().type != Token::Type::block_end) fail("expected the end of the statement ('%}')");
    next();
  }
  struct Depth {
    explicit Depth(Parser& p) : p_(p) {
      if (++p_.depth_ > kMaxNesting) p_.fail("the template nests too deeply");
    }
    ~Depth() { --p_.depth_; }
    Parser& p_;
  };

  static ExprPtr make(Expr::Kind k, int line) { return std::make_unique<Expr>(k, line); }

  // ---- statements ----

  // Parses until a block tag whose name is in `ends` (left current: the name).
  Body parse_body(const std::set<std::string>& ends) {
    Depth depth(*this);
    Body body;
    while (true) {
      const Token& tk = cur();
      if (tk.type == Token::Type::eof) {
        if (!ends.empty()) fail(fmt::format("unexpected end of template, expected '{}'", *ends.begin()));
        return body;
      }
      if (tk.type == Token::Type::text) {
        auto s = std::make_unique<Stmt>(Stmt::Kind::text, tk.line);
        s->text = tk.value;
        body.push_back(std::move(s));
        next();
        continue;
      }
      if (tk.type == Token::Type::variable_begin) {
        next();
        auto s = std::make_unique<Stmt>(Stmt::Kind::print, tk.line);
        s->expr = parse_tuple(false, true, {}, false);
        if (cur().type != Token::Type::variable_end) fail("expected the end of the print statement ('}}')");
        next();
        body.push_back(std::move(s));
        continue;
      }
      if (tk.type != Token::Type::block_begin) fail("unexpected token");
      const Token& name = look();
      if (name.type == Token::Type::name && ends.contains(name.value)) {
        next();
        return body;
      }
      next();
      if (auto s = parse_statement()) body.push_back(std::move(s));
    }
  }

  StmtPtr parse_statement() {
    if (cur().type != Token::Type::name) fail("expected a statement name");
    const std::string name = cur().value;
    const int line = cur().line;
    next();
    if (name == "if") return parse_if(line);
    if (name == "for") return parse_for(line);
    if (name == "set") return parse_set(line);
    if (name == "macro") return parse_macro(line);
    if (name == "filter") return parse_filter_block(line);
    if (name == "generation") {  // transformers' assistant-mask marker: renders its body
      expect_block_end();
      auto s = std::make_unique<Stmt>(Stmt::Kind::filter_block, line);
      s->body = parse_body({"endgeneration"});
      next();
      expect_block_end();
      return s;
    }
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) fail(fmt::format("'{}' outside of a loop", name));
      expect_block_end();
      return std::make_unique<Stmt>(name == "break" ? Stmt::Kind::break_ : Stmt::Kind::continue_, line);
    }
    static const std::set<std::string> kJinjaTags = {"call", "include", "import", "from", "extends", "block",
                                                     "with", "autoescape", "do"};
    if (kJinjaTags.contains(name)) fail(fmt::format("the '{}' tag is not supported by kvant's template engine", name));
    fail(fmt::format("unknown tag '{}'", name));
  }

  StmtPtr parse_if(int line) {
    auto s = std::make_unique<Stmt>(Stmt::Kind::if_, line);
    ExprPtr cond = parse_tuple(false, false, {}, false);
    expect_block_end();
    while (true) {
      Body body = parse_body({"elif", "else", "endif"});
      s->branches.emplace_back(std::move(cond), std::move(body));
      const std::string tag = cur().value;
      next();
      if (tag == "elif") {
        cond = parse_tuple(false, false, {}, false);
        expect_block_end();
        continue;
      }
      if (tag == "else") {
        expect_block_end();
        s->otherwise = parse_body({"endif"});
        next();
      }
      expect_block_end();
      return s;
    }
  }

  // Assignment targets: name, (a, b), a, b — or ns.attr when `with_namespace`.
  void parse_targets(Stmt& s, bool with_namespace) {
    if (with_namespace && cur().type == Token::Type::name && look().type == Token::Type::op && look().value == "." &&
        look(2).type == Token::Type::name) {
      s.targets.push_back(cur().value);
      next();
      next();
      s.attribute = cur().value;
      next();
      return;
    }
    ExprPtr target = parse_tuple(true, false, {"in"}, false);
    const auto add = [&](const Expr& e) {
      if (e.kind != Expr::Kind::name) fail("can only assign to names");
      s.targets.push_back(e.name);
    };
    if (target->kind == Expr::Kind::list && target->tuple) {
      s.unpack = true;
      for (const auto& item : target->items) add(*item);
    } else {
      add(*target);
    }
  }

  StmtPtr parse_for(int line) {
    auto s = std::make_unique<Stmt>(Stmt::Kind::for_, line);
    parse_targets(*s, false);
    if (!skip_name("in")) fail("expected 'in'");
    s->expr = parse_tuple(false, false, {"recursive"}, false);
    if (skip_name("if")) s->condition = parse_expression(true);
    if (skip_name("recursive")) fail("recursive loops are not supported by kvant's template engine");
    expect_block_end();
    ++loop_depth_;
    s->body = parse_body({"endfor", "else"});
    --loop_depth_;
    if (cur().value == "else") {
      next();
      expect_block_end();
      s->otherwise = parse_body({"endfor"});
    }
    next();
    expect_block_end();
    return s;
  }

  StmtPtr parse_set(int line) {
    auto s = std::make_unique<Stmt>(Stmt::Kind::set, line);
    parse_targets(*s, true);
    if (skip_op("=")) {
      s->expr = parse_tuple(false, true, {}, false);
      expect_block_end();
      return s;
    }
    if (s->unpack || !s->attribute.empty()) fail("expected '=' in a set statement");
    s->kind = Stmt::Kind::set_block;
    if (is_op("|")) s->filters.push_back(parse_filter(nullptr, false));
    expect_block_end();
    s->body = parse_body({"endset"});
    next();
    expect_block_end();
    return s;
  }

  StmtPtr parse_macro(int line) {
    auto s = std::make_unique<Stmt>(Stmt::Kind::macro, line);
    s->targets.push_back(expect_name());
    expect_op("(");
    while (!is_op(")")) {
      if (!s->params.empty()) expect_op(",");
      if (is_op(")")) break;
      std::string param = expect_name();
      ExprPtr def;
      if (skip_op("=")) def = parse_expression(true);
      s->params.emplace_back(std::move(param), std::move(def));
    }
    next();
    expect_block_end();
    const int saved = loop_depth_;
    loop_depth_ = 0;
    s->body = parse_body({"endmacro"});
    loop_depth_ = saved;
    next();
    if (cur().type == Token::Type::name) next();  // {% endmacro name %}
    expect_block_end();
    return s;
  }

  StmtPtr parse_filter_block(int line) {
    auto s = std::make_unique<Stmt>(Stmt::Kind::filter_block, line);
    s->filters.push_back(parse_filter(nullptr, true));
    expect_block_end();
    s->body = parse_body({"endfilter"});
    next();
    expect_block_end();
    return s;
  }

  // ---- expressions ----

  bool is_tuple_end(const std::set<std::string>& extra_end) const {
    const Token& tk = cur();
    if (tk.type == Token::Type::variable_end || tk.type == Token::Type::block_end || (tk.type == Token::Type::op && tk.value == ")"))
      return true;
    return tk.type == Token::Type::name && extra_end.contains(tk.value);
  }

  ExprPtr parse_tuple(bool simplified, bool with_condexpr, const std::set<std::string>& extra_end,
                      bool explicit_parentheses) {
    const int line = cur().line;
    std::vector<ExprPtr> args;
    bool is_tuple = false;
    while (true) {
      if (!args.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      if (simplified) args.push_back(parse_primary());
      else args.push_back(parse_expression(with_condexpr));
      if (is_op(",")) is_tuple = true;
      else break;
    }
    if (!is_tuple) {
      if (!args.empty()) return std::move(args[0]);
      if (!explicit_parentheses) fail("expected an expression");
    }
    auto e = make(Expr::Kind::list, line);
    e->tuple = true;
    e->items = std::move(args);
    return e;
  }

  ExprPtr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

  ExprPtr parse_condexpr() {
    Depth depth(*this);
    ExprPtr expr1 = parse_or();
    while (is_name("if")) {
      const int line = cur().line;
      next();
      ExprPtr expr2 = parse_or();
      ExprPtr expr3;
      if (skip_name("else")) expr3 = parse_condexpr();
      auto e = make(Expr::Kind::conditional, line);
      e->items.push_back(std::move(expr1));
      e->items.push_back(std::move(expr2));
      e->items.push_back(std::move(expr3));
      expr1 = std::move(e);
    }
    return expr1;
  }

  ExprPtr binary(std::string op, ExprPtr left, ExprPtr right, int line) {
    auto e = make(Expr::Kind::binary, line);
    e->name = std::move(op);
    e->items.push_back(std::move(left));
    e->items.push_back(std::move(right));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const int line = cur().line;
      next();
      left = binary("or", std::move(left), parse_and(), line);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const int line = cur().line;
      next();
      left = binary("and", std::move(left), parse_not(), line);
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      Depth depth(*this);
      const int line = cur().line;
      next();
      auto e = make(Expr::Kind::logical_not, line);
      e->object = parse_not();
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const int line = cur().line;
    ExprPtr expr = parse_math1();
    std::vector<std::string> ops;
    std::vector<ExprPtr> operands;
    while (true) {
      static const std::set<std::string> kCompare = {"==", "!=", "<", "<=", ">", ">="};
      if (cur().type == Token::Type::op && kCompare.contains(cur().value)) {
        ops.push_back(cur().value);
        next();
      } else if (is_name("in")) {
        ops.push_back("in");
        next();
      } else if (is_name("not") && look().type == Token::Type::name && look().value == "in") {
        ops.push_back("notin");
        next();
        next();
      } else {
        break;
      }
      operands.push_back(parse_math1());
    }
    if (ops.empty()) return expr;
    auto e = make(Expr::Kind::compare, line);
    e->object = std::move(expr);
    e->ops = std::move(ops);
    e->items = std::move(operands);
    return e;
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = cur().value;
      const int line = cur().line;
      next();
      left = binary(op, std::move(left), parse_concat(), line);
    }
    return left;
  }

  ExprPtr parse_concat() {
    const int line = cur().line;
    ExprPtr first = parse_math2();
    if (!is_op("~")) return first;
    auto e = make(Expr::Kind::concat, line);
    e->items.push_back(std::move(first));
    while (skip_op("~")) e->items.push_back(parse_math2());
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = cur().value;
      const int line = cur().line;
      next();
      left = binary(op, std::move(left), parse_pow(), line);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      const int line = cur().line;
      next();
      left = binary("**", std::move(left), parse_unary(true), line);
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    Depth depth(*this);
    const int line = cur().line;
    ExprPtr node;
    if (skip_op("-")) {
      node = make(Expr::Kind::negate, line);
      node->object = parse_unary(false);
    } else if (skip_op("+")) {
      node = make(Expr::Kind::plus, line);
      node->object = parse_unary(false);
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    Depth depth(*this);
    const Token& tk = cur();
    const int line = tk.line;
    if (tk.type == Token::Type::name) {
      auto e = make(Expr::Kind::constant, line);
      const std::string& n = tk.value;
      if (n == "true" || n == "True") e->value = Value(true);
      else if (n == "false" || n == "False") e->value = Value(false);
      else if (n == "none" || n == "None") e->value = Value::none();
      else {
        e->kind = Expr::Kind::name;
        e->name = n;
      }
      next();
      return e;
    }
    if (tk.type == Token::Type::string) {
      std::string s;
      while (cur().type == Token::Type::string) {
        s += cur().value;
        next();
      }
      auto e = make(Expr::Kind::constant, line);
      e->value = Value(std::move(s));
      return e;
    }
    if (tk.type == Token::Type::integer) {
      auto e = make(Expr::Kind::constant, line);
      try {
        const unsigned long long v = std::stoull(tk.value);
        if (v > static_cast<unsigned long long>(INT64_MAX)) throw std::out_of_range("int");
        e->value = Value(static_cast<int64_t>(v));
      } catch (const std::exception&) {
        fail("integer literal out of the 64-bit range");
      }
      next();
      return e;
    }
    if (tk.type == Token::Type::floating) {
      auto e = make(Expr::Kind::constant, line);
      e->value = Value(std::strtod(tk.value.c_str(), nullptr));
      next();
      return e;
    }
    if (skip_op("(")) {
      ExprPtr e = parse_tuple(false, true, {}, true);
      expect_op(")");
      return e;
    }
    if (skip_op("[")) {
      auto e = make(Expr::Kind::list, line);
      while (!is_op("]")) {
        if (!e->items.empty()) expect_op(",");
        if (is_op("]")) break;
        e->items.push_back(parse_expression(true));
      }
      next();
      return e;
    }
    if (skip_op("{")) {
      auto e = make(Expr::Kind::dict, line);
      while (!is_op("}")) {
        if (!e->items.empty()) expect_op(",");
        if (is_op("}")) break;
        e->items.push_back(parse_expression(true));
        expect_op(":");
        e->items.push_back(parse_expression(true));
      }
      next();
      return e;
    }
    fail("unexpected token in an expression");
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".") || is_op("[")) node = parse_subscript(std::move(node));
      else if (is_op("(")) node = parse_call(std::move(node));
      else return node;
    }
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) node = parse_filter(std::move(node), false);
      else if (is_name("is")) node = parse_test(std::move(node));
      else if (is_op("(")) node = parse_call(std::move(node));
      else return node;
    }
  }

  ExprPtr parse_subscript(ExprPtr node) {
    const int line = cur().line;
    if (skip_op(".")) {
      if (cur().type == Token::Type::name) {
        auto e = make(Expr::Kind::getattr, line);
        e->object = std::move(node);
        e->name = cur().value;
        next();
        return e;
      }
      if (cur().type != Token::Type::integer) fail("expected a name or a number after '.'");
      auto e = make(Expr::Kind::getitem, line);
      e->object = std::move(node);
      auto index = make(Expr::Kind::constant, line);
      index->value = Value(static_cast<int64_t>(std::stoll(cur().value)));
      e->items.push_back(std::move(index));
      next();
      return e;
    }
    expect_op("[");
    std::vector<ExprPtr> args;
    while (!is_op("]")) {
      if (!args.empty()) expect_op(",");
      args.push_back(parse_subscribed());
    }
    next();
    ExprPtr arg;
    if (args.size() == 1) {
      arg = std::move(args[0]);
    } else {
      for (const ExprPtr& a : args)
        if (a->kind == Expr::Kind::slice) fail("a slice inside a tuple subscript is not supported");
      arg = make(Expr::Kind::list, line);
      arg->tuple = true;
      arg->items = std::move(args);
    }
    if (arg->kind == Expr::Kind::slice) {  // object[a:b:c]
      arg->object = std::move(node);
      return arg;
    }
    auto e = make(Expr::Kind::getitem, line);
    e->object = std::move(node);
    e->items.push_back(std::move(arg));
    return e;
  }

  ExprPtr parse_subscribed() {
    const int line = cur().line;
    std::vector<ExprPtr> parts;
    if (skip_op(":")) {
      parts.emplace_back();
    } else {
      ExprPtr node = parse_expression(true);
      if (!skip_op(":")) return node;
      parts.push_back(std::move(node));
    }
    if (is_op(":") || is_op("]") || is_op(",")) parts.emplace_back();
    else parts.push_back(parse_expression(true));
    if (skip_op(":")) {
      if (is_op("]") || is_op(",")) parts.emplace_back();
      else parts.push_back(parse_expression(true));
    } else {
      parts.emplace_back();
    }
    auto e = make(Expr::Kind::slice, line);
    e->items = std::move(parts);
    return e;
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    bool require_comma = false;
    while (!is_op(")")) {
      if (require_comma) {
        expect_op(",");
        if (is_op(")")) break;
      }
      if (is_op("*") || is_op("**")) fail("*args and **kwargs are not supported by kvant's template engine");
      if (cur().type == Token::Type::name && look().type == Token::Type::op && look().value == "=") {
        std::string key = cur().value;
        next();
        next();
        e.keyword.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!e.keyword.empty()) fail("a positional argument follows keyword arguments");
        e.items.push_back(parse_expression(true));
      }
      require_comma = true;
    }
    next();
  }

  ExprPtr parse_call(ExprPtr node) {
    auto e = make(Expr::Kind::call, cur().line);
    e->object = std::move(node);
    parse_call_args(*e);
    return e;
  }

  ExprPtr parse_filter(ExprPtr node, bool start_inline) {
    while (is_op("|") || start_inline) {
      if (!start_inline) next();
      start_inline = false;
      const int line = cur().line;
      std::string name = expect_name();
      while (skip_op(".")) {
        name += '.';
        name += expect_name();
      }
      if (!filter_exists(name)) fail(fmt::format("no filter named '{}'", name));
      auto e = make(Expr::Kind::filter, line);
      e->name = std::move(name);
      e->object = std::move(node);
      if (is_op("(")) parse_call_args(*e);
      node = std::move(e);
    }
    return node;
  }

  ExprPtr parse_test(ExprPtr node) {
    const int line = cur().line;
    next();  // 'is'
    const bool negated = skip_name("not");
    std::string name = expect_name();
    while (skip_op(".")) {
        name += '.';
        name += expect_name();
      }
    if (!test_exists(name)) fail(fmt::format("no test named '{}'", name));
    auto e = make(Expr::Kind::test, line);
    e->name = std::move(name);
    e->object = std::move(node);
    e->negated = negated;
    const Token& tk = cur();
    const bool arg_follows = tk.type == Token::Type::name || tk.type == Token::Type::string ||
                             tk.type == Token::Type::integer || tk.type == Token::Type::floating ||
                             (tk.type == Token::Type::op && (tk.value == "[" || tk.value == "{"));
    if (is_op("(")) {
      parse_call_args(*e);
    } else if (arg_follows && !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail("you cannot chain multiple tests with 'is'");
      e->items.push_back(parse_postfix(parse_primary()));
    }
    return e;
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Body parse(std::string_view source) { return Parser(lex(source)).parse_template(); }

}  // namespace kvant::jinja
