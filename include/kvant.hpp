// A thin header-only C++ layer over include/kvant.h: owning handles, errors as
// kvant::api::Error exceptions, std::string and std::vector in and out. (kvant::api,
// not kvant: the library's own C++ classes live in namespace kvant.)
//
//   kvant::api::Model model("model.kvant");
//   kvant::api::Session session(model);
//   auto ids = model.tokenize(model.chat({{"user", "Hello!"}}));
//   session.generate(ids, {}, [](std::string_view piece) { std::cout << piece; return true; });
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvant.h"

namespace kvant::api {

class Error : public std::runtime_error {
 public:
  Error(kvant_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  kvant_status status() const { return status_; }

 private:
  kvant_status status_;
};

namespace detail {
inline void check(kvant_status s) {
  if (s != KVANT_OK) throw Error(s, kvant_last_error());
}
}  // namespace detail

struct Message {
  std::string role, content;
};

class Model {
 public:
  explicit Model(const std::string& path, const kvant_model_options* options = nullptr) {
    kvant_model* m = nullptr;
    detail::check(kvant_model_load(path.c_str(), options, &m));
    model_.reset(m);
  }
  kvant_model* get() const { return model_.get(); }
  std::string name() const { return kvant_model_name(get()); }
  int32_t vocab_size() const { return kvant_model_vocab_size(get()); }

  std::vector<int32_t> tokenize(std::string_view text, bool add_special = false) const {
    size_t n = 0;
    const kvant_status s = kvant_tokenize(get(), text.data(), text.size(), add_special, nullptr, 0, &n);
    if (s != KVANT_ERR_BUFFER_TOO_SMALL) detail::check(s);
    std::vector<int32_t> ids(n);
    detail::check(kvant_tokenize(get(), text.data(), text.size(), add_special, ids.data(), ids.size(), &n));
    return ids;
  }

  std::string detokenize(const std::vector<int32_t>& ids, bool skip_special = true) const {
    size_t n = 0;
    const kvant_status s = kvant_detokenize(get(), ids.data(), ids.size(), skip_special, nullptr, 0, &n);
    if (s != KVANT_ERR_BUFFER_TOO_SMALL) detail::check(s);
    std::string text(n + 1, '\0');
    detail::check(kvant_detokenize(get(), ids.data(), ids.size(), skip_special, text.data(), text.size(), &n));
    text.resize(n);
    return text;
  }

  // The conversation through the chat template, with the generation prompt.
  std::string chat(const std::vector<Message>& messages, const char* template_name = nullptr) const {
    std::vector<kvant_message> m;
    for (const auto& x : messages) m.push_back({x.role.c_str(), x.content.c_str()});
    size_t n = 0;
    const kvant_status s = kvant_chat_template_apply(get(), template_name, m.data(), m.size(), 1, nullptr, 0, &n);
    if (s != KVANT_ERR_BUFFER_TOO_SMALL) detail::check(s);
    std::string text(n + 1, '\0');
    detail::check(kvant_chat_template_apply(get(), template_name, m.data(), m.size(), 1, text.data(), text.size(), &n));
    text.resize(n);
    return text;
  }

 private:
  struct Free {
    void operator()(kvant_model* m) const { kvant_model_free(m); }
  };
  std::unique_ptr<kvant_model, Free> model_;
};

class Session {
 public:
  explicit Session(const Model& model, const kvant_session_options* options = nullptr) : model_(&model) {
    kvant_session* s = nullptr;
    detail::check(kvant_session_create(model.get(), options, &s));
    session_.reset(s);
  }
  kvant_session* get() const { return session_.get(); }

  // Streams generated text to `on_text`; returning false from it stops generation.
  // Returns the whole generated text. Sampling options default to the model's.
  std::string generate(const std::vector<int32_t>& prompt, const kvant_generate_options* options,
                       const std::function<bool(std::string_view)>& on_text = {}) {
    kvant_generate_options o;
    if (options) o = *options;
    else kvant_generate_options_init(&o, model_->get());
    struct State {
      const std::function<bool(std::string_view)>* fn;
      std::string text;
    } state{&on_text, {}};
    auto cb = [](const char* text, size_t len, int32_t, void* user) -> int {
      auto* st = static_cast<State*>(user);
      st->text.append(text, len);
      return *st->fn && !(*st->fn)(std::string_view(text, len)) ? 1 : 0;
    };
    const kvant_status s = kvant_generate(get(), prompt.data(), prompt.size(), &o, cb, &state);
    if (s != KVANT_ERR_CANCELLED) detail::check(s);
    return state.text;
  }

  void reset() { kvant_session_reset(get()); }
  void save(const std::string& path) const { detail::check(kvant_session_save(get(), path.c_str())); }
  void load(const std::string& path) { detail::check(kvant_session_load(get(), path.c_str())); }
  kvant_session_stats stats() const {
    kvant_session_stats s;
    kvant_session_stats_get(get(), &s);
    return s;
  }

 private:
  struct Free {
    void operator()(kvant_session* s) const { kvant_session_free(s); }
  };
  const Model* model_;
  std::unique_ptr<kvant_session, Free> session_;
};

}  // namespace kvant::api
