// Google Benchmark microbenchmarks of the CPU kernels at the shapes of llama-1b and
// llama2-7b, with bytes/s (weights streamed) and FLOP/s as counters; with CUDA and a GPU,
// the CUDA kernels too (kernels_bench_cuda.cpp, names cuda/...).
//   build/bin/kvant-kernels-bench --benchmark_filter=gemv
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "format/dtype.h"
#include "format/half.h"
#include "format/model_config.h"
#include "format/quant.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"

namespace {

using namespace kvant;

struct Weights {
  std::vector<uint8_t> bytes;
  cpu::WeightMatrix matrix;
};

// Random weights in `dtype`'s layout (quantized with the fast absmax method).
Weights make_weights(DType dtype, int64_t rows, int64_t cols) {
  Weights w;
  w.bytes.resize(*tensor_bytes(dtype, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols)));
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> row(static_cast<size_t>(cols));
  auto* scales = reinterpret_cast<uint16_t*>(w.bytes.data() + quant_region_bytes(dtype, rows, cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) v = dist(rng);
    switch (dtype) {
      case DType::f32: std::memcpy(w.bytes.data() + r * cols * 4, row.data(), static_cast<size_t>(cols) * 4); break;
      case DType::f16:
      case DType::bf16:
        for (int64_t k = 0; k < cols; ++k) {
          const uint16_t h = dtype == DType::f16 ? f32_to_f16(row[static_cast<size_t>(k)]) : f32_to_bf16(row[static_cast<size_t>(k)]);
          std::memcpy(w.bytes.data() + (r * cols + k) * 2, &h, 2);
        }
        break;
      case DType::q8:
        quantize_row_q8(row.data(), cols, reinterpret_cast<int8_t*>(w.bytes.data()) + r * cols, scales + r * cols / 32,
                        QuantMethod::absmax);
        break;
      case DType::q4:
        quantize_row_q4(row.data(), cols, w.bytes.data() + r * cols / 2, scales + r * cols / 32, QuantMethod::absmax);
        break;
    }
  }
  w.matrix = {dtype, rows, cols, w.bytes.data()};
  return w;
}

// y = W x for n tokens, rows split between `threads` threads like the executor does.
void BM_matmul(benchmark::State& state, DType dtype, int64_t rows, int64_t cols) {
  const int64_t n = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  const Weights w = make_weights(dtype, rows, cols);
  std::vector<float> x(static_cast<size_t>(n * cols), 0.5f), y(static_cast<size_t>(n * rows));
  // The quantized activations as the executor's quantize op leaves them (records, then
  // their packed form for many tokens).
  std::vector<uint8_t> xq(cpu::act_buffer_bytes(n, cols));
  for (int64_t t = 0; t < n; ++t) cpu::quantize_token(x.data() + t * cols, cols, n, t, xq.data(), n >= cpu::kPackedMinTokens);
  cpu::MatmulArgs a;
  a.w = w.matrix;
  a.x = x.data();
  a.ldx = cols;
  a.xq = xq.data();
  a.xp = cpu::packed_acts_in(xq.data(), n, cols);
  a.n_tokens = n;
  a.y = y.data();
  a.ldy = rows;
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    {
      const int ith = omp_get_thread_num(), nth = omp_get_num_threads();
      const int64_t per = (rows / nth + 3) / 4 * 4;
      cpu::matmul(a, std::min(rows, per * ith), std::min(rows, per * (ith + 1)));
    }
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = static_cast<double>(w.bytes.size());
  state.counters["weight_bytes_per_s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["flops"] =
      benchmark::Counter(2.0 * static_cast<double>(rows * cols * n), benchmark::Counter::kIsIterationInvariantRate);
}

void register_matmuls() {
  struct Shape {
    const char* name;
    int64_t rows, cols;
  };
  const Shape shapes[] = {
      {"llama-1b.attn_q", 2048, 2048}, {"llama-1b.attn_kv", 512, 2048}, {"llama-1b.ffn_up", 8192, 2048},
      {"llama-1b.ffn_down", 2048, 8192}, {"llama-1b.output", 32000, 2048},
      {"llama2-7b.attn_q", 4096, 4096}, {"llama2-7b.ffn_up", 11008, 4096}, {"llama2-7b.ffn_down", 4096, 11008},
  };
  for (DType dtype : {DType::q4, DType::q8, DType::f16, DType::bf16}) {
    for (const Shape& s : shapes) {
      const std::string name = std::string("gemv/") + std::string(dtype_name(dtype)) + "/" + s.name;
      benchmark::RegisterBenchmark(name.c_str(), BM_matmul, dtype, s.rows, s.cols)
          ->Args({1, 1})->Args({1, 2})->Unit(benchmark::kMicrosecond)->UseRealTime();
      const std::string gemm = std::string("gemm/") + std::string(dtype_name(dtype)) + "/" + s.name;
      benchmark::RegisterBenchmark(gemm.c_str(), BM_matmul, dtype, s.rows, s.cols)
          ->Args({128, 1})->Args({128, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
    }
  }
}

void BM_quantize_acts(benchmark::State& state) {
  const int64_t k = state.range(0);
  std::vector<float> x(static_cast<size_t>(k), 0.3f);
  std::vector<uint8_t> rec(cpu::act_record_bytes(k));
  for (auto _ : state) {
    cpu::quantize_acts(x.data(), k, rec.data());
    benchmark::DoNotOptimize(rec.data());
  }
  state.counters["bytes_per_s"] = benchmark::Counter(static_cast<double>(k) * 4, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_quantize_acts)->Arg(2048)->Arg(8192);

void BM_rms_norm(benchmark::State& state) {
  const int64_t n = state.range(0);
  std::vector<float> x(static_cast<size_t>(n), 0.3f), w(static_cast<size_t>(n), 1.0f), y(static_cast<size_t>(n));
  for (auto _ : state) {
    cpu::rms_norm(x.data(), w.data(), n, 1e-5f, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["bytes_per_s"] = benchmark::Counter(static_cast<double>(n) * 12, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_rms_norm)->Arg(2048)->Arg(4096);

// Decode attention of one token over `context` positions (llama-1b: 32 heads, 8 KV heads).
void BM_attention(benchmark::State& state, KvType type) {
  const int64_t context = state.range(0), heads = 32, kv_heads = 8, hd = 64;
  const KvLayout layout{type, 1, static_cast<uint32_t>(kv_heads), static_cast<uint32_t>(hd), kPageTokens};
  const int64_t n_pages = (context + kPageTokens - 1) / kPageTokens;
  std::vector<uint8_t> memory(static_cast<size_t>(n_pages * layout.page_bytes()));
  std::vector<uint8_t*> pages;
  for (int64_t p = 0; p < n_pages; ++p) pages.push_back(memory.data() + p * layout.page_bytes());
  std::vector<float> row(static_cast<size_t>(hd), 0.1f);
  for (int64_t pos = 0; pos < context; ++pos)
    for (int64_t g = 0; g < kv_heads; ++g)
      for (uint32_t kind = 0; kind < 2; ++kind) {
        uint8_t* region = pages[static_cast<size_t>(pos / kPageTokens)] + layout.region_offset(0, kind, static_cast<uint32_t>(g));
        cpu::store_kv_row(type, row.data(), hd, region + (pos % kPageTokens) * layout.row_bytes(),
                          reinterpret_cast<uint16_t*>(region + layout.scales_offset()) + pos % kPageTokens);
      }
  std::vector<float> q(static_cast<size_t>(heads * hd), 0.2f), out(q.size());
  cpu::AttentionArgs a{&layout, 0, pages.data(), heads, kv_heads, hd, 0.125f};
  std::vector<float> scratch(static_cast<size_t>(cpu::attention_scratch_floats(a)));
  for (auto _ : state) {
    for (int64_t g = 0; g < kv_heads; ++g) cpu::attend_group(a, g, q.data(), 0, context, out.data(), scratch.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["kv_bytes_per_s"] = benchmark::Counter(
      static_cast<double>(context * kv_heads * 2 * layout.row_bytes()), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

#if KVANT_HAVE_CUDA
bool register_cuda_benchmarks();  // kernels_bench_cuda.cpp: false without a GPU
#endif

int main(int argc, char** argv) {
  register_matmuls();
  for (KvType t : {KvType::f16, KvType::q8, KvType::q4}) {
    const std::string name = std::string("attention/") + std::string(kv_type_name(t));
    benchmark::RegisterBenchmark(name.c_str(), BM_attention, t)->Arg(512)->Arg(4096)->Unit(benchmark::kMicrosecond);
  }
#if KVANT_HAVE_CUDA
  if (!register_cuda_benchmarks()) std::fprintf(stderr, "kvant-kernels-bench: no GPU; the cuda/ benchmarks are skipped\n");
#endif
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
