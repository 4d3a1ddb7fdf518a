// Status and Result<T>: how every kvant function that can fail on user input reports it.
// The message names what is at fault (file, tensor, key, token or flag); the code lets
// the C API map failures to stable error numbers.
#pragma once

#include <fmt/format.h>

#include <optional>
#include <string>
#include <utility>

namespace kvant {

enum class ErrorCode : int {
  ok = 0,
  io = 1,                // open/read/write/rename failed, path missing or unreadable
  format = 2,            // a file's contents are malformed (kvant, safetensors, JSON)
  invalid_argument = 3,  // a caller or user passed something unusable
  unsupported = 4,       // well-formed but not supported (architecture, dtype, version)
  out_of_memory = 5,     // an allocation the input asked for cannot be made
  checksum = 6,          // stored and computed checksums differ
  context_full = 7,      // the KV cache cannot hold more tokens
  cancelled = 8,         // stopped by the caller (callback, signal)
  internal = 9,          // a kvant bug: should never happen
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return {}; }
  template <class... Args>
  static Status error(ErrorCode code, fmt::format_string<Args...> f, Args&&... args) {
    return Status(code, fmt::format(f, std::forward<Args>(args)...));
  }

  bool is_ok() const { return code_ == ErrorCode::ok; }
  explicit operator bool() const { return is_ok(); }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Prefixes context ("while reading foo.kvant: ...") to an error; no-op on success.
  Status with_context(std::string_view context) const {
    if (is_ok()) return *this;
    return Status(code_, fmt::format("{}: {}", context, message_));
  }

 private:
  ErrorCode code_ = ErrorCode::ok;
  std::string message_;
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(std::move(status)) {}  // NOLINT(google-explicit-constructor)

  bool is_ok() const { return value_.has_value(); }
  explicit operator bool() const { return is_ok(); }
  const Status& status() const { return status_; }

  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

inline const Status& status_of(const Status& s) { return s; }
template <class T>
const Status& status_of(const Result<T>& r) { return r.status(); }

}  // namespace kvant

// Propagate a failed Status (or the Status of a failed Result) to the caller.
#define KVANT_TRY(expr)                                                  \
  do {                                                                   \
    auto&& kvant_try_result_ = (expr);                                   \
    if (!kvant_try_result_) return ::kvant::status_of(kvant_try_result_); \
  } while (0)

#define KVANT_CONCAT_INNER_(a, b) a##b
#define KVANT_CONCAT_(a, b) KVANT_CONCAT_INNER_(a, b)
// KVANT_ASSIGN_OR_RETURN(auto x, make_x()) : x = value, or return the error. It expands to
// several statements: under an `if`, put it in braces.
#define KVANT_ASSIGN_OR_RETURN(decl, expr) \
  KVANT_ASSIGN_OR_RETURN_IMPL_(KVANT_CONCAT_(kvant_result_, __LINE__), decl, expr)
#define KVANT_ASSIGN_OR_RETURN_IMPL_(tmp, decl, expr) \
  auto tmp = (expr);                                  \
  if (!tmp) return tmp.status();                      \
  decl = std::move(tmp).value()
