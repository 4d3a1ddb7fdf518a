// The Llama family as a recipe of graph ops. n = tokens in the batch.
#include "runtime/models/models.h"

namespace kvant {

namespace {

Ref matmul(Graph& g, Ref x, const cpu::WeightMatrix& w, const float* bias, const std::string& name) {
  Node n(Op::matmul, w.rows, name);
  n.in[0] = x;
  n.w[0] = &w;
  n.bias[0] = bias;
  return g.add(n);
}

Ref binary(Graph& g, Op op, Ref a, Ref b, int64_t width, const std::string& name) {
  Node n(op, width, name);
  n.in[0] = a;
  n.in[1] = b;
  return g.add(n);
}

}  // namespace

Graph build_llama(const Model& model) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  const int64_t dim = c.dim, q_dim = int64_t{c.n_heads} * c.head_dim, kv_dim = int64_t{c.n_kv_heads} * c.head_dim;
  Graph g;
  Ref x = g.add(Node(Op::embed, dim, "embed"));  // (n, dim)
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    const std::string p = fmt::format("layers.{}.", l);
    g.set_stage(static_cast<int>(l));
    Node attn_norm(Op::norm, dim, p + "attn_norm");
    attn_norm.in[0] = x;
    attn_norm.vec = L.attn_norm;
    attn_norm.eps = c.norm_eps;
    const Ref h = g.add(attn_norm);                           // (n, dim)
    Ref q = matmul(g, h, L.attn_q, L.q_bias, p + "attn_q");    // (n, n_heads·head_dim)
    Ref k = matmul(g, h, L.attn_k, L.k_bias, p + "attn_k");    // (n, n_kv_heads·head_dim)
    const Ref v = matmul(g, h, L.attn_v, L.v_bias, p + "attn_v");
    Node rq(Op::rope, q_dim, p + "rope_q");
    rq.in[0] = q;
    q = g.add(rq);
    Node rk(Op::rope, kv_dim, p + "rope_k");
    rk.in[0] = k;
    k = g.add(rk);
    Node store(Op::kv_store, 0, p + "kv_store");
    store.in[0] = k;
    store.in[1] = v;
    store.layer = static_cast<int>(l);
    g.add(store);
    Node attn(Op::attention, q_dim, p + "attention");
    attn.in[0] = q;
    attn.layer = static_cast<int>(l);
    attn.in[1] = Ref{static_cast<int>(g.nodes().size()) - 1, 0};  // after the store (ordering only)
    const Ref a = g.add(attn);                                   // (n, n_heads·head_dim)
    const Ref o = matmul(g, a, L.attn_out, L.out_bias, p + "attn_out");  // (n, dim)
    x = binary(g, Op::add, x, o, dim, p + "attn_residual");
    Node ffn_norm(Op::norm, dim, p + "ffn_norm");
    ffn_norm.in[0] = x;
    ffn_norm.vec = L.ffn_norm;
    ffn_norm.eps = c.norm_eps;
    const Ref h2 = g.add(ffn_norm);
    const Ref gate = matmul(g, h2, L.ffn_gate, nullptr, p + "ffn_gate");  // (n, ffn)
    const Ref up = matmul(g, h2, L.ffn_up, nullptr, p + "ffn_up");        // (n, ffn)
    const Ref act = binary(g, Op::silu_mul, gate, up, c.ffn_dim, p + "ffn_act");
    const Ref down = matmul(g, act, L.ffn_down, nullptr, p + "ffn_down");  // (n, dim)
    x = binary(g, Op::add, x, down, dim, p + "ffn_residual");
  }
  g.set_stage(static_cast<int>(c.n_layers));
  Node sel(Op::select_rows, dim, "select_rows", false);
  sel.in[0] = x;
  x = g.add(sel);  // (n_out, dim): only the tokens whose logits are wanted
  Node out_norm(Op::norm, dim, "output_norm", false);
  out_norm.in[0] = x;
  out_norm.vec = w.output_norm;
  out_norm.eps = c.norm_eps;
  x = g.add(out_norm);
  Node logits(Op::matmul, c.vocab_size, "output", false);
  logits.in[0] = x;
  logits.w[0] = &w.output;
  g.output = g.add(logits);  // (n_out, vocab)
  return g;
}

}  // namespace kvant
