/* The shortest complete kvant program: load a model, render one chat message with its
 * template, and stream a greedy answer to stdout.
 *
 *   simple MODEL.kvant "What is the capital of France?"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvant.h"

static int print_piece(const char* text, size_t len, int32_t token, void* user) {
  (void)token;
  (void)user;
  fwrite(text, 1, len, stdout);
  fflush(stdout);
  return 0; /* nonzero would stop generation */
}

static int die(const char* what) {
  fprintf(stderr, "%s: %s\n", what, kvant_last_error());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MODEL.kvant PROMPT\n", argv[0]);
    return 2;
  }
  kvant_model* model = NULL;
  if (kvant_model_load(argv[1], NULL, &model) != KVANT_OK) return die("load");

  kvant_session* session = NULL;
  if (kvant_session_create(model, NULL, &session) != KVANT_OK) return die("session");

  /* The prompt through the model's chat template, then to token ids. */
  kvant_message message = {"user", argv[2]};
  size_t len = 0;
  kvant_chat_template_apply(model, NULL, &message, 1, 1, NULL, 0, &len);
  char* text = malloc(len + 1);
  if (kvant_chat_template_apply(model, NULL, &message, 1, 1, text, len + 1, &len) != KVANT_OK) return die("template");
  size_t n_ids = 0;
  kvant_tokenize(model, text, len, 0, NULL, 0, &n_ids);
  int32_t* ids = malloc(n_ids * sizeof(int32_t));
  if (kvant_tokenize(model, text, len, 0, ids, n_ids, &n_ids) != KVANT_OK) return die("tokenize");

  kvant_generate_options options;
  kvant_generate_options_init(&options, model);
  options.max_tokens = 256;
  options.sampling.temperature = 0; /* greedy */
  if (kvant_generate(session, ids, n_ids, &options, print_piece, NULL) != KVANT_OK) return die("generate");
  printf("\n");

  free(ids);
  free(text);
  kvant_session_free(session);
  kvant_model_free(model);
  return 0;
}
