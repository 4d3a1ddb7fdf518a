// The compute graph of one model evaluation: a list of nodes in execution order, each
// producing an activation of n_rows × width floats (or int8 records for `quantize`).
// Architectures build it (runtime/models/); the planner fuses nodes and places every
// output in one arena by liveness; a backend executes it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/matmul.h"

namespace kvant {

enum class Op : uint8_t {
  embed,         // out[t] = token_embd[token[t]] (+ pos_embd[pos[t]])
  select_rows,   // out = in0's rows listed by the batch's output rows (tokens that want logits)
  norm,          // out = rmsnorm(in0) * w   or   layernorm(in0) * w + b
  quantize,      // out = int8 activation records of in0 (for q8/q4 weights)
  matmul,        // out = in0 · Wᵀ (+ bias) (+ in1 when in1 is a residual)
  rope,          // out = in0 with RoPE applied per head at each token's position
  kv_store,      // writes in0 (keys) and in1 (values) into layer's KV cache; no output
  attention,     // out = softmax(q Kᵀ / sqrt(d)) V over layer's cache; in0 = q
  silu_mul,      // out = silu(in0) * in1
  gelu,          // out = gelu(in0)
  add,           // out = in0 + in1
  // Produced by the planner's fusion passes:
  matmul_multi,  // several matmuls of one input (q, k, v): outputs in out, out2, out3
  ffn_gated,     // out = silu(in0 · Gᵀ) * (in0 · Uᵀ), never storing the two products
  rope_store,    // in0 = q, in1 = k, in2 = v: out = rope(q); stores rope(k) and v
};

const char* op_name(Op op);

enum class NormKind : uint8_t { rms, layer };
enum class GeluKind : uint8_t { tanh, erf };

// A node's input: output `port` of node `node` (ports 1 and 2 exist only on the
// multi-output fused nodes).
struct Ref {
  int node = -1;
  int port = 0;
  bool valid() const { return node >= 0; }
  bool operator==(const Ref&) const = default;
};

struct Node {
  Node(Op op_, int64_t width_, std::string name_, bool batch_rows_ = true)
      : op(op_), width(width_), batch_rows(batch_rows_), name(std::move(name_)) {}

  Op op;
  Ref in[3];                 // producing nodes
  int64_t width = 0;         // floats per output row
  bool batch_rows = true;    // n_rows = tokens in the batch; false: the output rows (select_rows)
  std::string name;          // for debugging and plan dumps: "layers.3.attn_q"

  // Operands (which ones depend on op).
  const cpu::WeightMatrix* w[3] = {nullptr, nullptr, nullptr};  // matmul(_multi), ffn_gated: gate, up
  const float* vec = nullptr;      // norm weight
  const float* bias[3] = {nullptr, nullptr, nullptr};  // norm bias / matmul biases
  int layer = -1;                  // kv_store, attention, rope_store
  int stage = 0;                   // -1 before the layers, i in layer i, n_layers after (set by Graph)
  bool on_gpu = false;             // where the planner placed it
  float eps = 0.0f;
  NormKind norm = NormKind::rms;
  GeluKind gelu = GeluKind::tanh;
  bool residual = false;           // matmul: in1 is added (and out may alias it)
  Ref q_in;                        // the int8 records of in0, for quantized weights (planner)

  // Filled by the planner: arena byte offset of each output port.
  int64_t offset[3] = {-1, -1, -1};
  int n_outputs() const;        // 0 (kv_store), 1, or 2-3 (matmul_multi)
  int64_t out_width(int port) const;  // floats per row of an output port
  bool dead = false;            // removed by a fusion pass
  bool in_place = false;        // output 0 reuses the buffer of the residual in1
};

class Graph {
 public:
  Ref add(Node node);
  // Nodes added from now on belong to this stage (-1 embeddings, i layer i, n_layers head):
  // a model split between devices is cut between stages.
  void set_stage(int stage) { stage_ = stage; }
  std::vector<Node>& nodes() { return nodes_; }
  const std::vector<Node>& nodes() const { return nodes_; }
  Ref output;  // the logits

 private:
  std::vector<Node> nodes_;
  int stage_ = -1;
};

}  // namespace kvant
