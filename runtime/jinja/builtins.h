// Jinja's built-in filters, tests and globals, and the Python methods templates call
// on strings, lists and dicts — the ones chat templates use, with transformers'
// additions (tojson as json.dumps, raise_exception, strftime_now, namespace, dict).
#pragma once

#include <optional>
#include <string_view>

#include "runtime/jinja/value.h"

namespace kvant::jinja {

bool filter_exists(std::string_view name);
bool test_exists(std::string_view name);

Value apply_filter(std::string_view name, const Value& value, const CallArgs& args);
bool apply_test(std::string_view name, const Value& value, const CallArgs& args);

// value.name(args) for a Python method of str, list or dict; nullopt when `value` has
// no method of that name.
std::optional<Value> call_method(const Value& object, std::string_view name, const CallArgs& args);
bool is_method(const Value& object, std::string_view name);

// Jinja's attribute lookup (obj.name): a dict's item, else undefined (methods are
// resolved at the call). Jinja's item lookup (obj[key]) likewise.
Value get_attribute(const Value& object, std::string_view name);
Value get_item(const Value& object, const Value& key);

// range, namespace, dict, raise_exception, strftime_now; undefined for other names.
Value global_function(std::string_view name);

}  // namespace kvant::jinja
