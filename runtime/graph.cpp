#include "runtime/graph.h"

namespace kvant {

const char* op_name(Op op) {
  switch (op) {
    case Op::embed: return "embed";
    case Op::select_rows: return "select_rows";
    case Op::norm: return "norm";
    case Op::quantize: return "quantize";
    case Op::matmul: return "matmul";
    case Op::rope: return "rope";
    case Op::kv_store: return "kv_store";
    case Op::attention: return "attention";
    case Op::silu_mul: return "silu_mul";
    case Op::gelu: return "gelu";
    case Op::add: return "add";
    case Op::matmul_multi: return "matmul_multi";
    case Op::ffn_gated: return "ffn_gated";
    case Op::rope_store: return "rope_store";
  }
  return "?";
}

int Node::n_outputs() const {
  if (op == Op::kv_store) return 0;
  if (op == Op::matmul_multi) return w[2] ? 3 : (w[1] ? 2 : 1);
  return 1;
}

int64_t Node::out_width(int port) const {
  if (op == Op::matmul_multi) return w[port]->rows;
  return width;
}

Ref Graph::add(Node node) {
  node.stage = stage_;
  nodes_.push_back(std::move(node));
  return Ref{static_cast<int>(nodes_.size()) - 1, 0};
}

}  // namespace kvant
