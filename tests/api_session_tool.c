/* Helper of api_test (in C, through the public header): a session saved after a long
 * system prompt, and the same session restored in another process, continue with the
 * same logits.
 *
 *   api_session_tool MODEL FILE save   prefill the system prompt, save it to FILE, then
 *                                      prefill the user turn
 *   api_session_tool MODEL FILE load   restore FILE, then prefill the user turn
 *
 * Both print the next-token logits' top 5 (ids, values to 9 digits), then 8 greedy
 * tokens, and the number of tokens the last step evaluated. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvant.h"

static const char* kSystem =
    "You are a meticulous assistant for a team of astronomers. You answer questions about "
    "observing conditions, telescope scheduling, and data reduction. Always state the units of "
    "every quantity, prefer SI units, and say when a figure is an estimate. When a question is "
    "ambiguous, list the readings you considered and answer each one briefly. Keep answers under "
    "two hundred words unless asked for more, never invent instrument names, and when you do not "
    "know something, say so plainly and suggest where the team could look it up: the observatory "
    "handbook, the instrument manuals, or the archive's help desk. The team works in three time "
    "zones, so give times in UTC and mention local time only when asked.";

static void die(const char* what) {
  fprintf(stderr, "api_session_tool: %s: %s\n", what, kvant_last_error());
  exit(1);
}

/* The conversation rendered by the model's template and tokenized; the caller frees. */
static int32_t* render(kvant_model* m, const kvant_message* msgs, size_t n, int gen_prompt, size_t* n_ids) {
  size_t len = 0;
  kvant_chat_template_apply(m, NULL, msgs, n, gen_prompt, NULL, 0, &len);
  char* text = malloc(len + 1);
  if (kvant_chat_template_apply(m, NULL, msgs, n, gen_prompt, text, len + 1, &len) != KVANT_OK) die("template");
  kvant_tokenize(m, text, len, 0, NULL, 0, n_ids);
  int32_t* ids = malloc(*n_ids * sizeof(int32_t));
  if (kvant_tokenize(m, text, len, 0, ids, *n_ids, n_ids) != KVANT_OK) die("tokenize");
  free(text);
  return ids;
}

int main(int argc, char** argv) {
  if (argc != 4 || (strcmp(argv[3], "save") != 0 && strcmp(argv[3], "load") != 0)) {
    fprintf(stderr, "usage: %s MODEL FILE save|load\n", argv[0]);
    return 2;
  }
  kvant_model* model = NULL;
  if (kvant_model_load(argv[1], NULL, &model) != KVANT_OK) die("load model");
  kvant_session_options so;
  kvant_session_options_init(&so);
  so.n_ctx = 1024;
  kvant_session* s = NULL;
  if (kvant_session_create(model, &so, &s) != KVANT_OK) die("session");

  const kvant_message msgs[2] = {{"system", kSystem}, {"user", "When is the best time to observe Mars this year?"}};
  size_t n_system = 0, n_all = 0;
  int32_t* system_ids = render(model, msgs, 1, 0, &n_system);
  int32_t* all_ids = render(model, msgs, 2, 1, &n_all);

  if (strcmp(argv[3], "save") == 0) {
    if (kvant_session_prefill(s, system_ids, n_system) != KVANT_OK) die("prefill");
    if (kvant_session_save(s, argv[2]) != KVANT_OK) die("save");
  } else {
    if (kvant_session_load(s, argv[2]) != KVANT_OK) die("restore");
  }
  kvant_session_stats_reset(s);
  if (kvant_session_sync(s, all_ids, n_all) != KVANT_OK) die("sync");
  kvant_session_stats st;
  kvant_session_stats_get(s, &st);

  const float* logits = kvant_session_logits(s);
  const int32_t vocab = kvant_model_vocab_size(model);
  int used[5] = {-1, -1, -1, -1, -1};
  for (int r = 0; r < 5; ++r) {
    int best = -1;
    for (int32_t i = 0; i < vocab; ++i) {
      int taken = 0;
      for (int q = 0; q < r; ++q) taken |= used[q] == i;
      if (!taken && (best < 0 || logits[i] > logits[best])) best = i;
    }
    used[r] = best;
    printf("%d %.9g\n", best, logits[best]);
  }
  kvant_sampler_options greedy;
  kvant_sampler_options_init(&greedy, NULL);
  greedy.temperature = 0;
  kvant_sampler* sampler = NULL;
  if (kvant_sampler_create(&greedy, &sampler) != KVANT_OK) die("sampler");
  printf("greedy");
  for (int i = 0; i < 8; ++i) {
    int32_t t = 0;
    if (kvant_sampler_sample(sampler, s, &t) != KVANT_OK || kvant_session_decode(s, t) != KVANT_OK) die("decode");
    printf(" %d", t);
  }
  printf("\nevaluated %lld of %zu\n", (long long)st.tokens_evaluated, n_all);
  kvant_sampler_free(sampler);
  free(system_ids);
  free(all_ids);
  kvant_session_free(s);
  kvant_model_free(model);
  return 0;
}
