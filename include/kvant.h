/* kvant: quantized LLM inference. The C API of libkvant.a.
 *
 * Objects are opaque handles. Every function that can fail returns a kvant_status; on
 * failure, kvant_last_error() gives a message naming what is at fault (file, tensor,
 * token, option). Strings are UTF-8.
 *
 * Threads: a kvant_model is immutable after loading and may be shared by any number
 * of sessions on any threads at once. A kvant_session (and a kvant_sampler) must be
 * used by one thread at a time.
 *
 * The shortest complete program is examples/simple/simple.c.
 */
#ifndef KVANT_H
#define KVANT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVANT_VERSION_MAJOR 0
#define KVANT_VERSION_MINOR 1
#define KVANT_VERSION_PATCH 0

typedef enum kvant_status {
  KVANT_OK = 0,
  KVANT_ERR_IO = 1,               /* a file is missing, unreadable, or cannot be written */
  KVANT_ERR_FORMAT = 2,           /* a file's contents are malformed */
  KVANT_ERR_INVALID_ARGUMENT = 3, /* an argument or option is unusable */
  KVANT_ERR_UNSUPPORTED = 4,      /* well-formed but not supported (architecture, device, ...) */
  KVANT_ERR_OUT_OF_MEMORY = 5,
  KVANT_ERR_CHECKSUM = 6,         /* stored and computed checksums differ */
  KVANT_ERR_CONTEXT_FULL = 7,     /* the tokens do not fit in the session's context */
  KVANT_ERR_CANCELLED = 8,        /* stopped by the caller */
  KVANT_ERR_INTERNAL = 9,
  KVANT_ERR_BUFFER_TOO_SMALL = 10 /* the output did not fit; the size needed was returned */
} kvant_status;

typedef struct kvant_model kvant_model;
typedef struct kvant_session kvant_session;
typedef struct kvant_sampler kvant_sampler;

/* "0.1.0" */
const char* kvant_version(void);
/* The message of the last failed call on this thread ("" if none). */
const char* kvant_last_error(void);
/* A short name for a status ("KVANT_ERR_IO"). */
const char* kvant_status_name(kvant_status status);

/* ---- models ------------------------------------------------------------------- */

typedef struct kvant_model_options {
  const char* device;   /* "cpu" (default) or "cuda" */
  int gpu_layers;       /* with "cuda": layers on the GPU, the rest on the CPU; -1 (default) all */
  int verify_checksums; /* check every tensor's checksum while loading (reads the whole file) */
  int progress;         /* with "cuda": a progress bar on stderr while weights upload */
} kvant_model_options;

void kvant_model_options_init(kvant_model_options* options);
kvant_status kvant_model_load(const char* path, const kvant_model_options* options, kvant_model** model);
void kvant_model_free(kvant_model* model);

const char* kvant_model_name(const kvant_model* model);
const char* kvant_model_arch(const kvant_model* model);
int32_t kvant_model_vocab_size(const kvant_model* model);
int32_t kvant_model_context_length(const kvant_model* model); /* trained context */
int32_t kvant_model_bos(const kvant_model* model);            /* -1 if none */
/* Whether generation stops at this token (the file's EOS ids). */
int kvant_model_is_eos(const kvant_model* model, int32_t token);
/* Bytes of KV cache one token takes with this KV type ("f16", "q8", "q4"); 0 if unknown.
 * A session of n_ctx positions holds up to n_ctx times this. */
uint64_t kvant_model_kv_bytes_per_token(const kvant_model* model, const char* kv_type);

/* ---- tokenizer and chat template ---------------------------------------------- */

/* Text -> token ids. Writes at most `capacity` ids and sets *n_ids to the number the
 * text needs (KVANT_ERR_BUFFER_TOO_SMALL when it is more than capacity).
 * add_special: add what the tokenizer adds around a text (e.g. Llama-2's BOS). */
kvant_status kvant_tokenize(const kvant_model* model, const char* text, size_t text_len, int add_special,
                            int32_t* ids, size_t capacity, size_t* n_ids);
/* Token ids -> text (NUL-terminated when it fits; *text_len excludes the NUL). */
kvant_status kvant_detokenize(const kvant_model* model, const int32_t* ids, size_t n_ids, int skip_special,
                              char* text, size_t capacity, size_t* text_len);

typedef struct kvant_message {
  const char* role; /* "system", "user", "assistant" */
  const char* content;
} kvant_message;

/* Renders a conversation with the model's chat template (or a built-in one named by
 * template_name: chatml, llama3, llama2, mistral, gemma, phi3; NULL for the file's). */
kvant_status kvant_chat_template_apply(const kvant_model* model, const char* template_name,
                                       const kvant_message* messages, size_t n_messages, int add_generation_prompt,
                                       char* text, size_t capacity, size_t* text_len);

/* ---- sessions ------------------------------------------------------------------- */

typedef struct kvant_session_options {
  int32_t n_ctx;    /* context positions (0: the model's, at most 4096) */
  const char* kv_type; /* "f16" (default), "q8", "q4" */
  int threads;      /* CPU threads (0: every core) */
  int32_t n_batch;  /* prompt tokens per evaluation chunk (0: 256) */
  int shift_when_full; /* 0: a full context is an error; 1: drop the oldest half (keeping n_keep) */
  int32_t n_keep;
} kvant_session_options;

void kvant_session_options_init(kvant_session_options* options);
kvant_status kvant_session_create(kvant_model* model, const kvant_session_options* options, kvant_session** session);
void kvant_session_free(kvant_session* session);
void kvant_session_reset(kvant_session* session);

/* Evaluates tokens after those the session holds. */
kvant_status kvant_session_prefill(kvant_session* session, const int32_t* ids, size_t n_ids);
/* Makes the session hold exactly these tokens, evaluating only what differs from what it
 * holds (the next chat turn prefills only its new tokens). */
kvant_status kvant_session_sync(kvant_session* session, const int32_t* ids, size_t n_ids);
/* Evaluates one token. */
kvant_status kvant_session_decode(kvant_session* session, int32_t token);
/* Evaluates ids after the tokens the session holds and writes to logprobs[i] the natural
 * log-probability of ids[i] given everything before it (logprobs[0] is 0 when the session
 * held nothing). For perplexity and scoring; n_ids floats of output. */
kvant_status kvant_session_score(kvant_session* session, const int32_t* ids, size_t n_ids, float* logprobs);
/* The last evaluated token's logits (vocab_size floats), or NULL before any evaluation.
 * Valid until the next call that evaluates. */
const float* kvant_session_logits(const kvant_session* session);
/* The tokens the session holds; *n receives their count. */
const int32_t* kvant_session_tokens(const kvant_session* session, size_t* n);

typedef struct kvant_session_stats {
  int64_t tokens_evaluated;  /* tokens run through the model since creation or reset_stats */
  int64_t evaluations;
  double eval_seconds;
  int64_t prompt_tokens;     /* of the last kvant_generate: tokens prefilled */
  int64_t generated_tokens;  /* of the last kvant_generate */
  double prefill_seconds, decode_seconds;
} kvant_session_stats;

void kvant_session_stats_get(const kvant_session* session, kvant_session_stats* stats);
void kvant_session_stats_reset(kvant_session* session);

/* Saves the session (its tokens and KV cache) to a file: written to a temporary file
 * and renamed, so an interrupted save leaves nothing half written. */
kvant_status kvant_session_save(const kvant_session* session, const char* path);
/* Restores a saved session into this one (same model file, KV type and a context that
 * holds its tokens), with its user data. kvant_session_sync with the restored tokens
 * (kvant_session_tokens) evaluates only the last one, to get logits. */
kvant_status kvant_session_load(kvant_session* session, const char* path);
/* Bytes the application keeps with the session (kvant-chat keeps its conversation):
 * saved by kvant_session_save, replaced by kvant_session_load. */
kvant_status kvant_session_set_user_data(kvant_session* session, const void* data, size_t size);
const void* kvant_session_user_data(const kvant_session* session, size_t* size);

/* ---- sampling and generation ---------------------------------------------------- */

typedef struct kvant_sampler_options {
  float temperature;        /* 0: greedy */
  int32_t top_k;            /* 0: off */
  float top_p;              /* 1: off */
  float min_p;              /* 0: off */
  float repetition_penalty; /* 1: off */
  float frequency_penalty;
  float presence_penalty;
  int32_t penalty_last_n;
  uint64_t seed;            /* same seed, same tokens */
} kvant_sampler_options;

/* With model NULL: temperature 0.7, top_k 40, top_p 0.95, min_p 0.05, penalties off.
 * With a model: its generation defaults (generation_config.json) as transformers reads
 * them: greedy unless do_sample is set, and then the file's temperature, top_k and top_p
 * (or 1.0, 50, 1.0). */
void kvant_sampler_options_init(kvant_sampler_options* options, const kvant_model* model);
kvant_status kvant_sampler_create(const kvant_sampler_options* options, kvant_sampler** sampler);
void kvant_sampler_free(kvant_sampler* sampler);
/* Samples the next token from the session's logits and token history. */
kvant_status kvant_sampler_sample(kvant_sampler* sampler, const kvant_session* session, int32_t* token);

/* Called with each piece of generated text (whole UTF-8 characters only) and the token
 * that completed it. Return nonzero to stop generation. */
typedef int (*kvant_token_callback)(const char* text, size_t text_len, int32_t token, void* user_data);

typedef struct kvant_generate_options {
  int32_t max_tokens;             /* 0: until EOS or the context is full */
  const char* const* stop;        /* stop strings (not included in the output) */
  size_t n_stop;
  kvant_sampler_options sampling;
} kvant_generate_options;

void kvant_generate_options_init(kvant_generate_options* options, const kvant_model* model);

/* Makes the session hold `prompt_ids` (prefilling only what it lacks), then samples and
 * evaluates tokens until an EOS token, a stop string, max_tokens, or the callback stops
 * it. The generated tokens stay in the session. Returns KVANT_ERR_CANCELLED when the
 * callback stopped it (the text so far was delivered). */
kvant_status kvant_generate(kvant_session* session, const int32_t* prompt_ids, size_t n_prompt,
                            const kvant_generate_options* options, kvant_token_callback callback, void* user_data);

#ifdef __cplusplus
}
#endif

#endif /* KVANT_H */
