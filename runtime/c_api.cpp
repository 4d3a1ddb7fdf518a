// include/kvant.h on top of the runtime: handles own C++ objects, errors become a status
// plus a thread-local message.
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include "include/kvant.h"
#include "runtime/chat_template.h"
#include "runtime/sampler.h"
#include "runtime/session.h"
#include "runtime/tokenizer.h"
#if KVANT_HAVE_CUDA
#include "runtime/cuda_backend.h"
#endif

using namespace kvant;

struct kvant_model {
  std::shared_ptr<const Model> model;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the file has none (synthetic models)
  std::string tokenizer_error;
  std::string name, arch;
  Device device = Device::cpu;
  int gpu_layers = -1;
#if KVANT_HAVE_CUDA
  std::shared_ptr<const CudaWeights> cuda_weights;  // uploaded once, shared by the sessions
#endif
  mutable std::mutex templates_mutex;    // guards the lazily built templates
  mutable std::unique_ptr<ChatTemplate> file_template;
};

struct kvant_session {
  kvant_model* model;
  std::unique_ptr<Session> session;
  std::string user_data;  // saved with the session, restored by kvant_session_load
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

struct kvant_sampler {
  Sampler sampler;
};

namespace {

thread_local std::string g_last_error;

kvant_status to_status(ErrorCode code) {
  switch (code) {
    case ErrorCode::ok: return KVANT_OK;
    case ErrorCode::io: return KVANT_ERR_IO;
    case ErrorCode::format: return KVANT_ERR_FORMAT;
    case ErrorCode::invalid_argument: return KVANT_ERR_INVALID_ARGUMENT;
    case ErrorCode::unsupported: return KVANT_ERR_UNSUPPORTED;
    case ErrorCode::out_of_memory: return KVANT_ERR_OUT_OF_MEMORY;
    case ErrorCode::checksum: return KVANT_ERR_CHECKSUM;
    case ErrorCode::context_full: return KVANT_ERR_CONTEXT_FULL;
    case ErrorCode::cancelled: return KVANT_ERR_CANCELLED;
    case ErrorCode::internal: return KVANT_ERR_INTERNAL;
  }
  return KVANT_ERR_INTERNAL;
}

kvant_status fail(kvant_status s, std::string message) {
  g_last_error = std::move(message);
  return s;
}
kvant_status fail(const Status& st) { return fail(to_status(st.code()), st.message()); }
kvant_status ok() { return KVANT_OK; }

// Runs f, turning exceptions (allocation failures, bugs) into statuses: nothing thrown
// crosses the C boundary.
template <class F>
kvant_status guarded(F&& f) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return fail(KVANT_ERR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(KVANT_ERR_INTERNAL, std::string("internal error: ") + e.what());
  }
}

// Copies a string into a caller buffer (NUL-terminated when room allows).
kvant_status write_text(const std::string& s, char* out, size_t capacity, size_t* len) {
  if (len) *len = s.size();
  if (capacity <= s.size()) {
    if (out && capacity > 0) {
      std::memcpy(out, s.data(), capacity - 1);
      out[capacity - 1] = '\0';
    }
    return fail(KVANT_ERR_BUFFER_TOO_SMALL, fmt::format("the text needs {} bytes plus a NUL", s.size()));
  }
  if (out) {
    std::memcpy(out, s.data(), s.size());
    out[s.size()] = '\0';
  }
  return ok();
}

const Tokenizer* need_tokenizer(const kvant_model* m, kvant_status* st) {
  if (!m->tokenizer) *st = fail(KVANT_ERR_UNSUPPORTED, "this model has no usable tokenizer: " + m->tokenizer_error);
  return m->tokenizer.get();
}

SamplerOptions to_sampler_options(const kvant_sampler_options& o) {
  SamplerOptions s;
  s.temperature = o.temperature;
  s.top_k = o.top_k;
  s.top_p = o.top_p;
  s.min_p = o.min_p;
  s.repetition_penalty = o.repetition_penalty;
  s.frequency_penalty = o.frequency_penalty;
  s.presence_penalty = o.presence_penalty;
  s.penalty_last_n = o.penalty_last_n;
  s.seed = o.seed;
  return s;
}

}  // namespace

extern "C" {

const char* kvant_version(void) { return "0.1.0"; }
const char* kvant_last_error(void) { return g_last_error.c_str(); }

const char* kvant_status_name(kvant_status status) {
  switch (status) {
    case KVANT_OK: return "KVANT_OK";
    case KVANT_ERR_IO: return "KVANT_ERR_IO";
    case KVANT_ERR_FORMAT: return "KVANT_ERR_FORMAT";
    case KVANT_ERR_INVALID_ARGUMENT: return "KVANT_ERR_INVALID_ARGUMENT";
    case KVANT_ERR_UNSUPPORTED: return "KVANT_ERR_UNSUPPORTED";
    case KVANT_ERR_OUT_OF_MEMORY: return "KVANT_ERR_OUT_OF_MEMORY";
    case KVANT_ERR_CHECKSUM: return "KVANT_ERR_CHECKSUM";
    case KVANT_ERR_CONTEXT_FULL: return "KVANT_ERR_CONTEXT_FULL";
    case KVANT_ERR_CANCELLED: return "KVANT_ERR_CANCELLED";
    case KVANT_ERR_INTERNAL: return "KVANT_ERR_INTERNAL";
    case KVANT_ERR_BUFFER_TOO_SMALL: return "KVANT_ERR_BUFFER_TOO_SMALL";
  }
  return "KVANT_ERR_UNKNOWN";
}

void kvant_model_options_init(kvant_model_options* o) {
  if (!o) return;
  o->device = "cpu";
  o->gpu_layers = -1;
  o->verify_checksums = 0;
  o->progress = 0;
}

kvant_status kvant_model_load(const char* path, const kvant_model_options* options, kvant_model** out) {
  if (!path || !out) return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_model_load: path and model must not be NULL");
  *out = nullptr;
  return guarded([&] {
    kvant_model_options o;
    kvant_model_options_init(&o);
    if (options) o = *options;
    const std::string device = o.device && *o.device ? o.device : "cpu";
    if (device != "cpu" && device != "cuda")
      return fail(KVANT_ERR_INVALID_ARGUMENT, fmt::format("unknown device '{}' (cpu, cuda)", device));
#if !KVANT_HAVE_CUDA
    if (device == "cuda")
      return fail(KVANT_ERR_UNSUPPORTED, "device 'cuda' is not available: this build has no CUDA backend");
#endif
    auto model = Model::load(path, o.verify_checksums != 0);
    if (!model) return fail(model.status());
    auto m = std::make_unique<kvant_model>();
    m->model = std::move(model).value();
#if KVANT_HAVE_CUDA
    if (device == "cuda") {
      std::string gpu;
      if (!cuda_available(&gpu)) return fail(KVANT_ERR_UNSUPPORTED, "device 'cuda': no usable CUDA GPU found");
      const int layers = static_cast<int>(m->model->config().n_layers);
      m->device = Device::cuda;
      m->gpu_layers = o.gpu_layers < 0 || o.gpu_layers > layers ? layers : o.gpu_layers;
      auto uploaded = CudaWeights::upload(*m->model, m->gpu_layers, o.progress != 0);
      if (!uploaded) return fail(uploaded.status());
      m->cuda_weights = std::move(uploaded).value();
    }
#endif
    const Metadata& meta = m->model->file().metadata();
    m->name = std::string(meta.get_string_or("general.name", "model").value());
    m->arch = std::string(arch_name(m->model->config().arch));
    auto tok = Tokenizer::from_metadata(meta);
    if (tok) m->tokenizer = std::move(tok).value();
    else m->tokenizer_error = tok.status().message();
    *out = m.release();
    return ok();
  });
}

void kvant_model_free(kvant_model* model) { delete model; }
const char* kvant_model_name(const kvant_model* m) { return m ? m->name.c_str() : ""; }
const char* kvant_model_arch(const kvant_model* m) { return m ? m->arch.c_str() : ""; }
int32_t kvant_model_vocab_size(const kvant_model* m) { return m ? static_cast<int32_t>(m->model->config().vocab_size) : 0; }
int32_t kvant_model_context_length(const kvant_model* m) {
  return m ? static_cast<int32_t>(m->model->config().max_seq_len) : 0;
}
int32_t kvant_model_bos(const kvant_model* m) { return m && m->tokenizer ? m->tokenizer->bos_id() : -1; }
int kvant_model_is_eos(const kvant_model* m, int32_t token) { return m && m->tokenizer && m->tokenizer->is_eos(token); }
uint64_t kvant_model_kv_bytes_per_token(const kvant_model* m, const char* kv_type) {
  if (!m || !kv_type) return 0;
  const auto kv = kv_type_from_name(kv_type);
  return kv ? m->model->config().kv_bytes_per_token(*kv) : 0;
}

kvant_status kvant_tokenize(const kvant_model* m, const char* text, size_t text_len, int add_special, int32_t* ids,
                            size_t capacity, size_t* n_ids) {
  if (!m || (!text && text_len > 0)) return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_tokenize: NULL model or text");
  return guarded([&] {
    kvant_status st = KVANT_OK;
    const Tokenizer* tok = need_tokenizer(m, &st);
    if (!tok) return st;
    auto encoded = tok->encode(std::string_view(text ? text : "", text_len), add_special != 0);
    if (!encoded) return fail(encoded.status());
    if (n_ids) *n_ids = encoded->size();
    if (encoded->size() > capacity)
      return fail(KVANT_ERR_BUFFER_TOO_SMALL, fmt::format("the text needs {} token ids", encoded->size()));
    if (ids && !encoded->empty()) std::memcpy(ids, encoded->data(), encoded->size() * sizeof(int32_t));
    return ok();
  });
}

kvant_status kvant_detokenize(const kvant_model* m, const int32_t* ids, size_t n_ids, int skip_special, char* text,
                              size_t capacity, size_t* text_len) {
  if (!m || (!ids && n_ids > 0)) return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_detokenize: NULL model or ids");
  return guarded([&] {
    kvant_status st = KVANT_OK;
    const Tokenizer* tok = need_tokenizer(m, &st);
    if (!tok) return st;
    return write_text(tok->decode(std::span<const int32_t>(ids, n_ids), skip_special != 0), text, capacity, text_len);
  });
}

kvant_status kvant_chat_template_apply(const kvant_model* m, const char* template_name, const kvant_message* messages,
                                       size_t n_messages, int add_generation_prompt, char* text, size_t capacity,
                                       size_t* text_len) {
  if (!m || (!messages && n_messages > 0))
    return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_chat_template_apply: NULL model or messages");
  return guarded([&] {
    std::vector<ChatMessage> msgs;
    for (size_t i = 0; i < n_messages; ++i) {
      if (!messages[i].role || !messages[i].content)
        return fail(KVANT_ERR_INVALID_ARGUMENT, fmt::format("message {} has a NULL role or content", i));
      msgs.push_back({messages[i].role, messages[i].content});
    }
    const Metadata& meta = m->model->file().metadata();
    Result<std::string> rendered = Status::ok();
    if (template_name && *template_name) {
      auto t = ChatTemplate::builtin(template_name, meta);
      if (!t) return fail(t.status());
      rendered = (*t)->render(msgs, add_generation_prompt != 0);
    } else {
      std::lock_guard<std::mutex> lock(m->templates_mutex);
      if (!m->file_template) {
        auto t = ChatTemplate::from_metadata(meta);
        if (!t) return fail(t.status());
        m->file_template = std::move(t).value();
      }
      rendered = m->file_template->render(msgs, add_generation_prompt != 0);
    }
    if (!rendered) return fail(rendered.status());
    return write_text(*rendered, text, capacity, text_len);
  });
}

void kvant_session_options_init(kvant_session_options* o) {
  if (!o) return;
  o->n_ctx = 0;
  o->kv_type = "f16";
  o->threads = 0;
  o->n_batch = 0;
  o->shift_when_full = 0;
  o->n_keep = 0;
}

kvant_status kvant_session_create(kvant_model* m, const kvant_session_options* options, kvant_session** out) {
  if (!m || !out) return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_session_create: NULL model or session");
  *out = nullptr;
  return guarded([&] {
    kvant_session_options o;
    kvant_session_options_init(&o);
    if (options) o = *options;
    ContextOptions c;
    c.n_ctx = o.n_ctx;
    c.threads = o.threads;
    c.n_batch = o.n_batch > 0 ? o.n_batch : 256;
    c.overflow = o.shift_when_full ? ContextOverflow::shift : ContextOverflow::error;
    c.n_keep = o.n_keep;
    auto kv = kv_type_from_name(o.kv_type ? o.kv_type : "f16");
    if (!kv) return fail(KVANT_ERR_INVALID_ARGUMENT, fmt::format("unknown KV type '{}' (f16, q8, q4)", o.kv_type));
    c.kv_type = *kv;
    c.device = m->device;
    c.gpu_layers = m->gpu_layers;
#if KVANT_HAVE_CUDA
    c.cuda_weights = m->cuda_weights;
#endif
    auto session = Session::create(m->model, c);
    if (!session) return fail(session.status());
    auto s = std::make_unique<kvant_session>();
    s->model = m;
    s->session = std::move(session).value();
    *out = s.release();
    return ok();
  });
}

void kvant_session_free(kvant_session* s) { delete s; }
void kvant_session_reset(kvant_session* s) {
  if (s) s->session->reset();
}

kvant_status kvant_session_prefill(kvant_session* s, const int32_t* ids, size_t n) {
  if (!s || (!ids && n > 0)) return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_session_prefill: NULL session or ids");
  return guarded([&] {
    const Status st = s->session->append(std::span<const int32_t>(ids, n));
    return st ? ok() : fail(st);
  });
}

kvant_status kvant_session_sync(kvant_session* s, const int32_t* ids, size_t n) {
  if (!s || !ids || n == 0) return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_session_sync: NULL session or no tokens");
  return guarded([&] {
    const Status st = s->session->sync(std::span<const int32_t>(ids, n));
    return st ? ok() : fail(st);
  });
}

kvant_status kvant_session_score(kvant_session* s, const int32_t* ids, size_t n, float* logprobs) {
  if (!s || ((!ids || !logprobs) && n > 0))
    return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_session_score: NULL session, ids or output");
  return guarded([&] {
    const Status st = s->session->score(std::span<const int32_t>(ids, n), std::span<float>(logprobs, n));
    return st ? ok() : fail(st);
  });
}

kvant_status kvant_session_decode(kvant_session* s, int32_t token) { return kvant_session_prefill(s, &token, 1); }

const float* kvant_session_logits(const kvant_session* s) {
  if (!s) return nullptr;
  const auto l = s->session->logits();
  return l.empty() ? nullptr : l.data();
}

const int32_t* kvant_session_tokens(const kvant_session* s, size_t* n) {
  if (!s) {
    if (n) *n = 0;
    return nullptr;
  }
  const auto& t = s->session->tokens();
  if (n) *n = t.size();
  return t.data();
}

void kvant_session_stats_get(const kvant_session* s, kvant_session_stats* out) {
  if (!s || !out) return;
  const ContextStats& c = s->session->context().stats();
  out->tokens_evaluated = c.tokens_evaluated;
  out->evaluations = c.evaluations;
  out->eval_seconds = c.eval_seconds;
  out->prompt_tokens = s->prompt_tokens;
  out->generated_tokens = s->generated_tokens;
  out->prefill_seconds = s->prefill_seconds;
  out->decode_seconds = s->decode_seconds;
}

void kvant_session_stats_reset(kvant_session* s) {
  if (!s) return;
  s->session->context().reset_stats();
  s->prompt_tokens = s->generated_tokens = 0;
  s->prefill_seconds = s->decode_seconds = 0;
}

kvant_status kvant_session_save(const kvant_session* s, const char* path) {
  if (!s || !path) return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_session_save: NULL session or path");
  return guarded([&] {
    const Status st = s->session->save(path, s->user_data);
    return st ? ok() : fail(st);
  });
}

kvant_status kvant_session_load(kvant_session* s, const char* path) {
  if (!s || !path) return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_session_load: NULL session or path");
  return guarded([&] {
    std::string data;
    const Status st = s->session->load(path, &data);
    if (!st) return fail(st);
    s->user_data = std::move(data);
    return ok();
  });
}

kvant_status kvant_session_set_user_data(kvant_session* s, const void* data, size_t size) {
  if (!s || (!data && size > 0)) return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_session_set_user_data: NULL argument");
  return guarded([&] {
    s->user_data.assign(static_cast<const char*>(data), size);
    return ok();
  });
}

const void* kvant_session_user_data(const kvant_session* s, size_t* size) {
  if (size) *size = s ? s->user_data.size() : 0;
  return s ? s->user_data.data() : nullptr;
}

void kvant_sampler_options_init(kvant_sampler_options* o, const kvant_model* m) {
  if (!o) return;
  const SamplerOptions d;
  o->temperature = d.temperature;
  o->top_k = d.top_k;
  o->top_p = d.top_p;
  o->min_p = d.min_p;
  o->repetition_penalty = d.repetition_penalty;
  o->frequency_penalty = d.frequency_penalty;
  o->presence_penalty = d.presence_penalty;
  o->penalty_last_n = d.penalty_last_n;
  o->seed = d.seed;
  if (!m) return;
  // As transformers' generate() reads generation_config.json: greedy unless do_sample
  // is set; when it is, the file's temperature / top_k / top_p or transformers'
  // defaults for them (1.0, 50, 1.0), with min_p off.
  const Metadata& meta = m->model->file().metadata();
  const auto do_sample = meta.get_bool("generation.do_sample");
  if (!do_sample || !*do_sample) {
    o->temperature = 0.0f;
  } else {
    o->temperature = 1.0f;
    o->top_k = 50;
    o->top_p = 1.0f;
    o->min_p = 0.0f;
    if (auto v = meta.get_f32("generation.temperature")) o->temperature = *v;
    if (auto v = meta.get_f32("generation.top_p")) o->top_p = *v;
    if (auto v = meta.get_i64("generation.top_k")) o->top_k = static_cast<int32_t>(*v);
  }
  if (auto v = meta.get_f32("generation.repetition_penalty")) o->repetition_penalty = *v;
}

kvant_status kvant_sampler_create(const kvant_sampler_options* options, kvant_sampler** out) {
  if (!out) return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_sampler_create: NULL sampler");
  return guarded([&] {
    kvant_sampler_options o;
    kvant_sampler_options_init(&o, nullptr);
    if (options) o = *options;
    *out = new kvant_sampler{Sampler(to_sampler_options(o))};
    return ok();
  });
}

void kvant_sampler_free(kvant_sampler* s) { delete s; }

kvant_status kvant_sampler_sample(kvant_sampler* sampler, const kvant_session* s, int32_t* token) {
  if (!sampler || !s || !token) return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_sampler_sample: NULL argument");
  const auto logits = s->session->logits();
  if (logits.empty()) return fail(KVANT_ERR_INVALID_ARGUMENT, "the session has evaluated nothing yet");
  *token = sampler->sampler.sample(logits, s->session->tokens());
  return ok();
}

void kvant_generate_options_init(kvant_generate_options* o, const kvant_model* m) {
  if (!o) return;
  o->max_tokens = 0;
  o->stop = nullptr;
  o->n_stop = 0;
  kvant_sampler_options_init(&o->sampling, m);
}

kvant_status kvant_generate(kvant_session* s, const int32_t* prompt, size_t n_prompt, const kvant_generate_options* options,
                            kvant_token_callback callback, void* user) {
  if (!s || (!prompt && n_prompt > 0))
    return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_generate: NULL session or prompt");
  return guarded([&]() -> kvant_status {
    kvant_generate_options o;
    kvant_generate_options_init(&o, s->model);
    if (options) o = *options;
    kvant_status st = KVANT_OK;
    const Tokenizer* tok = need_tokenizer(s->model, &st);
    if (!tok) return st;
    Session& session = *s->session;
    using Clock = std::chrono::steady_clock;
    s->prompt_tokens = s->generated_tokens = 0;
    s->prefill_seconds = s->decode_seconds = 0;

    auto start = Clock::now();
    const int64_t before = session.context().stats().tokens_evaluated;
    if (n_prompt > 0) {
      const Status sync = session.sync(std::span<const int32_t>(prompt, n_prompt));
      if (!sync) return fail(sync);
    } else if (session.logits().empty()) {
      return fail(KVANT_ERR_INVALID_ARGUMENT, "kvant_generate: no prompt and nothing evaluated yet");
    }
    s->prompt_tokens = session.context().stats().tokens_evaluated - before;
    s->prefill_seconds = std::chrono::duration<double>(Clock::now() - start).count();

    Sampler sampler(to_sampler_options(o.sampling));
    StreamingDecoder decoder(*tok, /*skip_special_tokens=*/true);
    std::vector<std::string> stops;
    for (size_t i = 0; i < o.n_stop; ++i)
      if (o.stop && o.stop[i] && *o.stop[i]) stops.emplace_back(o.stop[i]);
    std::string pending;  // text held back while it could be the start of a stop string
    auto deliver = [&](std::string_view text, int32_t token) {
      return callback && callback(text.data(), text.size(), token, user) != 0;
    };
    // Emits what cannot be part of a stop string; true when a stop string completed.
    auto emit = [&](int32_t token, bool* stopped) {
      for (const auto& stop : stops) {
        const size_t at = pending.find(stop);
        if (at != std::string::npos) {
          *stopped = true;
          return deliver(std::string_view(pending).substr(0, at), token);
        }
      }
      size_t keep = 0;  // longest suffix of pending that begins a stop string
      for (const auto& stop : stops)
        for (size_t k = std::min(stop.size() - 1, pending.size()); k > keep; --k)
          if (pending.compare(pending.size() - k, k, stop, 0, k) == 0) {
            keep = k;
            break;
          }
      // Never split a UTF-8 character when holding back.
      while (keep > 0 && keep < pending.size() && (static_cast<uint8_t>(pending[pending.size() - keep]) & 0xc0) == 0x80)
        ++keep;
      const std::string out = pending.substr(0, pending.size() - keep);
      pending.erase(0, pending.size() - keep);
      return !out.empty() && deliver(out, token);
    };

    start = Clock::now();
    const int64_t limit = o.max_tokens > 0 ? o.max_tokens : INT64_MAX;
    kvant_status result = KVANT_OK;
    // What a sampled token leads to: the end (EOS, not kept), or its evaluation, after
    // which a stop string or the callback may end the generation.
    bool cancelled = false, ended = false;
    auto decide = [&](int32_t token) {
      if (tok->is_eos(token)) {
        ended = true;
        return GreedyNext::stop;
      }
      pending += decoder.push(token);
      bool stopped = false;
      cancelled = emit(token, &stopped);  // the delivered token is kept
      ended = cancelled || stopped;
      return ended ? GreedyNext::evaluate_and_stop : GreedyNext::evaluate;
    };
    for (int64_t i = 0; i < limit && !ended;) {
      const int32_t token = sampler.sample(session.logits(), session.tokens());
      const GreedyNext what = decide(token);
      if (what == GreedyNext::stop) break;
      Status ev;
      if (what == GreedyNext::evaluate && sampler.is_argmax() && limit - i > 1) {
        // Greedy without penalties: the rest is chosen where the logits are (on a GPU
        // the next step is queued before this one's token is read).
        int64_t evaluated = 0;
        ev = session.greedy(token, limit - i, decide, &evaluated);
        i += evaluated;
        s->generated_tokens += evaluated;
      } else {
        ev = session.append(std::span<const int32_t>(&token, 1));
        ++i;
        ++s->generated_tokens;
      }
      if (cancelled) {
        result = ev ? fail(KVANT_ERR_CANCELLED, "generation stopped by the callback") : fail(ev);
        break;
      }
      if (!ev) {
        if (ev.code() != ErrorCode::context_full) result = fail(ev);  // the answer ends where the context does
        break;
      }
    }
    if (result == KVANT_OK) {
      pending += decoder.flush();
      bool stopped = false;
      if (!stops.empty()) emit(-1, &stopped);
      if (!stopped && !pending.empty()) deliver(pending, -1);
    }
    s->decode_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return result;
  });
}

}  // extern "C"
