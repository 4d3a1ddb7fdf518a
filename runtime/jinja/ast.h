// The syntax tree of a parsed Jinja template.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/jinja/value.h"

namespace kvant::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    constant,   // value
    name,       // name
    list,       // items (tuple when `tuple`)
    dict,       // pairs (key = items[2i], value = items[2i+1])
    getattr,    // object.name
    getitem,    // object[index]
    slice,      // object[start:stop:step] (items: start, stop, step; null when absent)
    call,       // object(items..., keyword...)
    filter,     // object | name(items..., keyword...)
    test,       // object is [not] name(items...)
    negate,     // -object
    plus,       // +object
    logical_not,
    binary,     // op: + - * / // % ** and or
    concat,     // items joined with ~
    compare,    // object (ops[i] items[i])...
    conditional,  // items: value, condition, otherwise (may be null)
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;  // variable, attribute, filter or test name; binary operator
  ExprPtr object;
  std::vector<ExprPtr> items;
  std::vector<std::pair<std::string, ExprPtr>> keyword;
  std::vector<std::string> ops;  // compare operators: == != < <= > >= in notin
  bool tuple = false;
  bool negated = false;
  Expr(Kind k, int l) : kind(k), line(l) {}
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind {
    text,         // text
    print,        // {{ expr }}
    if_,          // branches: (condition, body)...; otherwise
    for_,         // targets in expr [if condition]: body; otherwise
    set,          // targets = expr, or namespace attribute (target_object.name)
    set_block,    // {% set name %}body{% endset %}, through filters
    macro,        // name(params) body
    filter_block, // {% filter name(args) %}body{% endfilter %}
    break_,
    continue_,
  };
  Kind kind;
  int line = 0;
  std::string text;
  ExprPtr expr;       // print value, for iterable, set value
  ExprPtr condition;  // for-loop filter
  std::vector<std::string> targets;
  std::string attribute;  // set ns.attribute
  bool unpack = false;    // targets form a tuple
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body, otherwise;
  std::vector<std::pair<std::string, ExprPtr>> params;  // macro parameters and defaults
  std::vector<ExprPtr> filters;                         // set_block / filter_block: filter calls on a placeholder
  Stmt(Kind k, int l) : kind(k), line(l) {}
};

// Parses a template (throws jinja::Error naming the line on syntax errors).
Body parse(std::string_view source);

}  // namespace kvant::jinja
