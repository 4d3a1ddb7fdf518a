// GPT-2 as a recipe of graph ops. n = tokens in the batch.
#include "runtime/models/models.h"

namespace kvant {

Graph build_gpt2(const Model& model) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  const int64_t dim = c.dim, q_dim = int64_t{c.n_heads} * c.head_dim;
  Graph g;
  auto layer_norm = [&](Ref x, const float* weight, const float* bias, bool batch_rows, const std::string& name) {
    Node n(Op::norm, dim, name, batch_rows);
    n.in[0] = x;
    n.vec = weight;
    n.bias[0] = bias;
    n.eps = c.norm_eps;
    n.norm = NormKind::layer;
    return g.add(n);
  };
  auto matmul = [&](Ref x, const cpu::WeightMatrix& m, const float* bias, const std::string& name) {
    Node n(Op::matmul, m.rows, name);
    n.in[0] = x;
    n.w[0] = &m;
    n.bias[0] = bias;
    return g.add(n);
  };
  auto add = [&](Ref a, Ref b, const std::string& name) {
    Node n(Op::add, dim, name);
    n.in[0] = a;
    n.in[1] = b;
    return g.add(n);
  };

  Ref x = g.add(Node(Op::embed, dim, "embed"));  // (n, dim): token + position
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    const std::string p = fmt::format("layers.{}.", l);
    g.set_stage(static_cast<int>(l));
    const Ref h = layer_norm(x, L.attn_norm, L.attn_norm_bias, true, p + "attn_norm");  // (n, dim)
    const Ref q = matmul(h, L.attn_q, L.q_bias, p + "attn_q");                         // (n, dim)
    const Ref k = matmul(h, L.attn_k, L.k_bias, p + "attn_k");
    const Ref v = matmul(h, L.attn_v, L.v_bias, p + "attn_v");
    Node store(Op::kv_store, 0, p + "kv_store");
    store.in[0] = k;
    store.in[1] = v;
    store.layer = static_cast<int>(l);
    const Ref stored = g.add(store);
    Node attn(Op::attention, q_dim, p + "attention");
    attn.in[0] = q;
    attn.in[1] = stored;  // ordering only
    attn.layer = static_cast<int>(l);
    const Ref a = g.add(attn);
    x = add(x, matmul(a, L.attn_out, L.out_bias, p + "attn_out"), p + "attn_residual");
    const Ref h2 = layer_norm(x, L.ffn_norm, L.ffn_norm_bias, true, p + "ffn_norm");
    const Ref up = matmul(h2, L.ffn_up, L.up_bias, p + "ffn_up");  // (n, ffn)
    Node gelu(Op::gelu, c.ffn_dim, p + "ffn_act");
    gelu.in[0] = up;
    gelu.gelu = c.act == Activation::gelu ? GeluKind::erf : GeluKind::tanh;
    const Ref act = g.add(gelu);
    x = add(x, matmul(act, L.ffn_down, L.down_bias, p + "ffn_down"), p + "ffn_residual");
  }
  g.set_stage(static_cast<int>(c.n_layers));
  Node sel(Op::select_rows, dim, "select_rows", false);
  sel.in[0] = x;
  x = layer_norm(g.add(sel), w.output_norm, w.output_norm_bias, false, "output_norm");  // (n_out, dim)
  Node logits(Op::matmul, c.vocab_size, "output", false);
  logits.in[0] = x;
  logits.w[0] = &w.output;
  g.output = g.add(logits);  // (n_out, vocab)
  return g;
}

}  // namespace kvant
