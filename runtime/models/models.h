// Architectures as graph builders: each turns a Model into the graph of one evaluation
// of a batch of tokens. Adding an architecture adds a builder here, not an engine.
#pragma once

#include "runtime/graph.h"
#include "runtime/model.h"

namespace kvant {

// Llama family: Llama-2/3, TinyLlama, SmolLM, Mistral (sliding window lives in the KV
// cache and attention range), Qwen2 (QKV bias).
Graph build_llama(const Model& model);
// GPT-2: LayerNorm, GELU, learned positions.
Graph build_gpt2(const Model& model);

inline Graph build_graph(const Model& model) {
  return model.config().arch == Arch::gpt2 ? build_gpt2(model) : build_llama(model);
}

}  // namespace kvant
