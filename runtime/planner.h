// Graph -> plan: fusion passes, int8 activation quantization where weights are
// quantized, and placement of every intermediate in one arena by liveness.
#pragma once

#include <cstdint>
#include <string>

#include "runtime/graph.h"

namespace kvant {

struct PlanOptions {
  int64_t n_tokens = 0;   // rows of the batch
  int64_t n_outputs = 0;  // rows whose logits are computed
  bool fuse = true;       // off only to test fused against unfused execution
  int gpu_layers = 0;     // layers [0, gpu_layers) run on the GPU, with the embeddings; the head too when
  int n_layers = 0;       // every layer does
};

struct Plan {
  uint64_t id = 0;        // unique per plan made in a process (keys captured GPU graphs)
  Graph graph;            // fused, quantize nodes inserted, dead nodes removed, offsets set
  int64_t arena_bytes = 0;
  PlanOptions options;

  int64_t rows(const Node& n) const { return n.batch_rows ? options.n_tokens : options.n_outputs; }
  std::string dump() const;  // one line per node, for debugging
  // Outputs made before node `boundary` and read at or after it (what crosses a device
  // boundary there), with their byte sizes.
  std::vector<std::pair<Ref, int64_t>> live_across(size_t boundary) const;
};

Plan make_plan(Graph graph, const PlanOptions& options);

}  // namespace kvant
