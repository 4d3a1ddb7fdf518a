#include "runtime/planner.h"

#include <algorithm>
#include <fmt/format.h>

#include <atomic>
#include <map>

namespace kvant {

namespace {

// Number of references to each (node, port) among live nodes, plus the graph output.
std::map<std::pair<int, int>, int> count_uses(const Graph& g) {
  std::map<std::pair<int, int>, int> uses;
  for (const Node& n : g.nodes()) {
    if (n.dead) continue;
    for (const Ref& r : n.in)
      if (r.valid()) ++uses[{r.node, r.port}];
    if (n.q_in.valid()) ++uses[{n.q_in.node, n.q_in.port}];
  }
  if (g.output.valid()) ++uses[{g.output.node, g.output.port}];
  return uses;
}

void replace_refs(Graph& g, Ref from, Ref to) {
  for (Node& n : g.nodes()) {
    for (Ref& r : n.in)
      if (r == from) r = to;
    if (n.q_in == from) n.q_in = to;
  }
  if (g.output == from) g.output = to;
}

// matmul A + add(X, A) -> A accumulates into X.
void fuse_residual(Graph& g) {
  auto uses = count_uses(g);
  auto& nodes = g.nodes();
  for (size_t i = 0; i < nodes.size(); ++i) {
    Node& add = nodes[i];
    if (add.dead || add.op != Op::add) continue;
    for (int side = 0; side < 2; ++side) {
      const Ref a = add.in[side], x = add.in[1 - side];
      Node& mm = nodes[static_cast<size_t>(a.node)];
      if (mm.op != Op::matmul || mm.residual || uses[{a.node, 0}] != 1 || !mm.batch_rows) continue;
      mm.residual = true;
      mm.in[1] = x;
      add.dead = true;
      // The add's result is now the matmul's output, which must come after every other
      // reader of x: it does, since the add was the matmul's only reader and x's
      // readers before the matmul are earlier nodes.
      replace_refs(g, Ref{static_cast<int>(i), 0}, a);
      break;
    }
  }
}

// silu_mul(matmul G(h), matmul U(h)) -> ffn_gated(h).
void fuse_gated_ffn(Graph& g) {
  auto uses = count_uses(g);
  auto& nodes = g.nodes();
  for (Node& s : nodes) {
    if (s.dead || s.op != Op::silu_mul) continue;
    Node& gate = nodes[static_cast<size_t>(s.in[0].node)];
    Node& up = nodes[static_cast<size_t>(s.in[1].node)];
    if (gate.op != Op::matmul || up.op != Op::matmul || gate.residual || up.residual || gate.bias[0] || up.bias[0] ||
        !(gate.in[0] == up.in[0]) || uses[{s.in[0].node, 0}] != 1 || uses[{s.in[1].node, 0}] != 1)
      continue;
    s.op = Op::ffn_gated;
    s.w[0] = gate.w[0];
    s.w[1] = up.w[0];
    s.in[0] = gate.in[0];
    s.in[1] = Ref{};
    gate.dead = up.dead = true;
  }
}

// Consecutive matmuls of one input (q, k, v) -> matmul_multi with one output each.
void fuse_multi(Graph& g) {
  auto& nodes = g.nodes();
  for (size_t i = 0; i < nodes.size(); ++i) {
    Node& first = nodes[i];
    if (first.dead || first.op != Op::matmul || first.residual) continue;
    std::vector<size_t> group = {i};
    for (size_t j = i + 1; j < nodes.size() && group.size() < 3; ++j) {
      const Node& n = nodes[j];
      if (n.dead) continue;
      if (n.op != Op::matmul || n.residual || !(n.in[0] == first.in[0]) || n.batch_rows != first.batch_rows) break;
      group.push_back(j);
    }
    if (group.size() < 2) continue;
    first.op = Op::matmul_multi;
    for (size_t p = 1; p < group.size(); ++p) {
      Node& other = nodes[group[p]];
      first.w[p] = other.w[0];
      first.bias[p] = other.bias[0];
      other.dead = true;
      replace_refs(g, Ref{static_cast<int>(group[p]), 0}, Ref{static_cast<int>(i), static_cast<int>(p)});
    }
  }
}

// rope(M:0), rope(M:1), kv_store(rope_k, M:2) -> rope_store(M:0, M:1, M:2).
void fuse_rope_store(Graph& g) {
  auto uses = count_uses(g);
  auto& nodes = g.nodes();
  for (size_t i = 0; i < nodes.size(); ++i) {
    Node& store = nodes[i];
    if (store.dead || store.op != Op::kv_store) continue;
    Node& rope_k = nodes[static_cast<size_t>(store.in[0].node)];
    if (rope_k.op != Op::rope || uses[{store.in[0].node, 0}] != 1) continue;
    const Ref k = rope_k.in[0];
    // The rope of q from the same matmul_multi.
    for (size_t j = 0; j < i; ++j) {
      Node& rope_q = nodes[j];
      if (rope_q.dead || rope_q.op != Op::rope || j == static_cast<size_t>(store.in[0].node)) continue;
      if (rope_q.in[0].node != k.node || rope_q.in[0].port != 0 || k.port != 1) continue;
      // rope_store takes rope_q's place in the order; its output replaces rope_q's.
      rope_q.op = Op::rope_store;
      rope_q.in[1] = k;
      rope_q.in[2] = store.in[1];
      rope_q.layer = store.layer;
      rope_k.dead = store.dead = true;
      replace_refs(g, Ref{static_cast<int>(i), 0}, Ref{static_cast<int>(j), 0});  // ordering refs to the store
      break;
    }
  }
}

// A quantize node before the first consumer of each input that quantized weights read.
Graph insert_quantize(const Graph& g) {
  auto needs_records = [](const Node& n) {
    if (n.op != Op::matmul && n.op != Op::matmul_multi && n.op != Op::ffn_gated) return false;
    for (const auto* w : n.w)
      if (w && w->quantized()) return true;
    return false;
  };
  Graph out;
  std::vector<int> new_index(g.nodes().size(), -1);
  std::map<std::pair<int, int>, Ref> quantized;  // old (node, port) -> new quantize node
  auto remap = [&](Ref r) { return r.valid() ? Ref{new_index[static_cast<size_t>(r.node)], r.port} : r; };
  for (size_t i = 0; i < g.nodes().size(); ++i) {
    Node n = g.nodes()[i];
    if (n.dead) continue;
    for (Ref& r : n.in) r = remap(r);
    if (needs_records(n)) {
      const std::pair<int, int> key{g.nodes()[i].in[0].node, g.nodes()[i].in[0].port};
      auto it = quantized.find(key);
      if (it == quantized.end()) {
        const Node& src = out.nodes()[static_cast<size_t>(n.in[0].node)];
        Node q(Op::quantize, src.out_width(n.in[0].port), n.name + ".quantize", n.batch_rows);
        q.in[0] = n.in[0];
        out.set_stage(n.stage);
        it = quantized.emplace(key, out.add(q)).first;
      }
      n.q_in = it->second;
    }
    new_index[i] = static_cast<int>(out.nodes().size());
    out.set_stage(n.stage);
    out.add(n);
  }
  out.output = remap(g.output);
  return out;
}

// First-fit placement of every output in one arena; an output is freed after its
// last reader. A residual matmul writes into its residual's buffer when that buffer
// has no later reader.
int64_t allocate(Plan& plan) {
  Graph& g = plan.graph;
  auto& nodes = g.nodes();
  const size_t n = nodes.size();
  std::map<std::pair<int, int>, int> last_use;
  for (size_t i = 0; i < n; ++i) {
    for (const Ref& r : nodes[i].in)
      if (r.valid()) last_use[{r.node, r.port}] = static_cast<int>(i);
    if (nodes[i].q_in.valid()) last_use[{nodes[i].q_in.node, nodes[i].q_in.port}] = static_cast<int>(i);
  }
  if (g.output.valid()) last_use[{g.output.node, g.output.port}] = static_cast<int>(n);  // kept to the end

  struct Block {
    int64_t offset, size;
  };
  std::vector<Block> free_blocks;
  int64_t arena = 0;
  auto alloc = [&](int64_t size) {
    size = (size + 63) / 64 * 64;
    for (size_t b = 0; b < free_blocks.size(); ++b) {
      if (free_blocks[b].size < size) continue;
      const int64_t off = free_blocks[b].offset;
      free_blocks[b].offset += size;
      free_blocks[b].size -= size;
      if (free_blocks[b].size == 0) free_blocks.erase(free_blocks.begin() + static_cast<long>(b));
      return off;
    }
    const int64_t off = arena;
    arena += size;
    return off;
  };
  auto release = [&](int64_t off, int64_t size) {
    size = (size + 63) / 64 * 64;
    free_blocks.push_back({off, size});
    std::sort(free_blocks.begin(), free_blocks.end(), [](const Block& a, const Block& b) { return a.offset < b.offset; });
    std::vector<Block> merged;
    for (const Block& b : free_blocks) {
      if (!merged.empty() && merged.back().offset + merged.back().size == b.offset) merged.back().size += b.size;
      else merged.push_back(b);
    }
    free_blocks = std::move(merged);
  };
  auto bytes_of = [&](const Node& node, int port) {
    const int64_t rows = plan.rows(node);
    if (node.op == Op::quantize) return static_cast<int64_t>(cpu::act_buffer_bytes(rows, node.width));
    return rows * node.out_width(port) * 4;
  };
  // Buffers ending at node i (their owner may be an earlier node, for aliased outputs).
  std::vector<std::vector<std::pair<int64_t, int64_t>>> frees(n + 1);
  for (size_t i = 0; i < n; ++i) {
    Node& node = nodes[i];
    for (int p = 0; p < node.n_outputs(); ++p) {
      const int64_t size = bytes_of(node, p);
      const auto lu = last_use.find({static_cast<int>(i), p});
      const int end = lu == last_use.end() ? static_cast<int>(i) : lu->second;
      if (p == 0 && node.op == Op::matmul && node.residual) {
        const Ref x = node.in[1];
        const Node& owner = nodes[static_cast<size_t>(x.node)];
        if (last_use[{x.node, x.port}] == static_cast<int>(i) && bytes_of(owner, x.port) == size) {
          // Take over the residual's buffer: cancel its release at i, release at our end.
          const int64_t off = owner.offset[x.port];
          auto& fr = frees[i];
          fr.erase(std::remove(fr.begin(), fr.end(), std::pair<int64_t, int64_t>{off, size}), fr.end());
          node.offset[0] = off;
          node.in_place = true;
          frees[static_cast<size_t>(end)].push_back({off, size});
          continue;
        }
      }
      node.offset[p] = alloc(size);
      frees[static_cast<size_t>(end)].push_back({node.offset[p], size});
    }
    for (const auto& [off, size] : frees[i]) release(off, size);
  }
  return arena;
}

}  // namespace

std::vector<std::pair<Ref, int64_t>> Plan::live_across(size_t boundary) const {
  const auto& nodes = graph.nodes();
  std::map<std::pair<int, int>, int64_t> live;
  auto consider = [&](Ref r) {
    if (!r.valid() || static_cast<size_t>(r.node) >= boundary) return;
    const Node& src = nodes[static_cast<size_t>(r.node)];
    if (src.n_outputs() <= r.port) return;  // ordering-only reference (kv_store)
    const int64_t bytes = src.op == Op::quantize ? static_cast<int64_t>(cpu::act_buffer_bytes(rows(src), src.width))
                                                 : rows(src) * src.out_width(r.port) * 4;
    live[{r.node, r.port}] = bytes;
  };
  for (size_t i = boundary; i < nodes.size(); ++i) {
    for (const Ref& r : nodes[i].in) consider(r);
    consider(nodes[i].q_in);
  }
  consider(graph.output);
  std::vector<std::pair<Ref, int64_t>> out;
  for (const auto& [key, bytes] : live) out.push_back({Ref{key.first, key.second}, bytes});
  return out;
}

Plan make_plan(Graph graph, const PlanOptions& options) {
  static std::atomic<uint64_t> next_id{1};
  if (options.fuse) {
    fuse_residual(graph);
    fuse_gated_ffn(graph);
    fuse_multi(graph);
    fuse_rope_store(graph);
  }
  Plan plan;
  plan.id = next_id++;
  plan.options = options;
  plan.graph = insert_quantize(graph);
  for (Node& n : plan.graph.nodes())
    n.on_gpu = options.gpu_layers > 0 && (n.stage < options.gpu_layers || options.gpu_layers >= options.n_layers);
  plan.arena_bytes = allocate(plan);
  return plan;
}

std::string Plan::dump() const {
  std::string s;
  const auto& nodes = graph.nodes();
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    s += fmt::format("{:4} {:<13} {:<28} rows {:5} width {:6} @{}", i, op_name(n.op), n.name, rows(n), n.width,
                     n.offset[0]);
    for (const Ref& r : n.in)
      if (r.valid()) s += fmt::format(" in {}:{}", r.node, r.port);
    if (n.q_in.valid()) s += fmt::format(" q {}", n.q_in.node);
    if (n.in_place) s += " (in place)";
    s += "\n";
  }
  return s + fmt::format("arena {} bytes\n", arena_bytes);
}

}  // namespace kvant
