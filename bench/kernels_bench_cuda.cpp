// Google Benchmark microbenchmarks of the CUDA kernels at the shapes of llama-1b and
// llama2-7b (registered only when a GPU is present): decode GEMV and gate/up GEMV for
// q4, q8 and f16 weights, activation quantization, fused RMSNorm + quantization, and
// decode attention over 512 and 4096 positions of each KV type. Each iteration is timed
// with CUDA events (manual time); counters give bytes/s moved.
//   kvant-kernels-bench --benchmark_filter=cuda/
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "format/dtype.h"
#include "format/model_config.h"
#include "kernels/cuda/kernels.h"
#include "kernels/layout.h"

namespace {

using namespace kvant;

struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(size_t bytes, int fill = 0) {
    cudaMalloc(&p, bytes);
    cudaMemset(p, fill, bytes);
  }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

// Runs `launch` once per iteration, timed with events on the default stream.
template <class F>
void time_iterations(benchmark::State& state, F&& launch) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  launch();  // warm-up (first-launch costs)
  cudaDeviceSynchronize();
  for (auto _ : state) {
    cudaEventRecord(start);
    launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms / 1e3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (cudaGetLastError() != cudaSuccess) state.SkipWithError("CUDA error");
}

size_t matrix_bytes(DType d, int64_t rows, int64_t cols) {
  return *tensor_bytes(d, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols));
}

// Weights are a byte pattern (0x11: small q8/q4 quants, f16 scales and values ~5e-4):
// speed does not depend on their values.
void BM_cuda_gemv(benchmark::State& state, DType dtype, int64_t rows, int64_t cols) {
  const size_t bytes = matrix_bytes(dtype, rows, cols);
  DeviceBuffer w(bytes, 0x11), x(static_cast<size_t>(cols) * 4), xq(cuda::act_bytes(cols)),
      y(static_cast<size_t>(rows) * 4);
  const cuda::DeviceMatrix m{dtype, rows, cols, w.as<uint8_t>()};
  time_iterations(state, [&] { cuda::gemv(m, x.as<float>(), xq.as<uint8_t>(), 1, y.as<float>(), rows, false, nullptr); });
  state.counters["weight_bytes_per_s"] = benchmark::Counter(static_cast<double>(bytes), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_cuda_gemv_gated(benchmark::State& state, DType dtype, int64_t rows, int64_t cols) {
  const size_t bytes = matrix_bytes(dtype, rows, cols);
  DeviceBuffer g(bytes, 0x11), u(bytes, 0x11), x(static_cast<size_t>(cols) * 4), xq(cuda::act_bytes(cols)),
      y(static_cast<size_t>(rows) * 4);
  const cuda::DeviceMatrix gm{dtype, rows, cols, g.as<uint8_t>()}, um{dtype, rows, cols, u.as<uint8_t>()};
  time_iterations(state, [&] { cuda::gemv_gated(gm, um, x.as<float>(), xq.as<uint8_t>(), 1, y.as<float>(), nullptr); });
  state.counters["weight_bytes_per_s"] =
      benchmark::Counter(2.0 * static_cast<double>(bytes), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_cuda_quantize_acts(benchmark::State& state) {
  const int64_t k = state.range(0);
  DeviceBuffer x(static_cast<size_t>(k) * 4), q(cuda::act_bytes(k));
  time_iterations(state, [&] { cuda::quantize_acts(x.as<float>(), 1, k, q.as<uint8_t>(), nullptr); });
  state.counters["bytes_per_s"] = benchmark::Counter(static_cast<double>(k) * 4, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_cuda_rms_norm_quantize(benchmark::State& state) {
  const int64_t k = state.range(0);
  DeviceBuffer x(static_cast<size_t>(k) * 4), w(static_cast<size_t>(k) * 4), y(static_cast<size_t>(k) * 4),
      q(cuda::act_bytes(k));
  time_iterations(state, [&] {
    cuda::rms_norm_quantize(x.as<float>(), w.as<float>(), 1, k, 1e-5f, y.as<float>(), q.as<uint8_t>(), nullptr);
  });
  state.counters["bytes_per_s"] = benchmark::Counter(static_cast<double>(k) * 12, benchmark::Counter::kIsIterationInvariantRate);
}

// One decode token attending over `depth` positions of one layer's paged KV cache.
void BM_cuda_attention(benchmark::State& state, KvType type, int64_t n_heads, int64_t n_kv_heads, int64_t hd) {
  const int64_t depth = state.range(0);
  const KvLayout layout{type, 1, static_cast<uint32_t>(n_kv_heads), static_cast<uint32_t>(hd), kPageTokens};
  const int64_t pages = (depth + kPageTokens - 1) / kPageTokens;
  DeviceBuffer pool(static_cast<size_t>(pages) * layout.page_bytes(), 0x11);
  std::vector<int32_t> table(static_cast<size_t>(pages));
  for (int64_t i = 0; i < pages; ++i) table[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  DeviceBuffer dtable(table.size() * 4), positions(4), slots(4, 0), q(static_cast<size_t>(n_heads * hd) * 4),
      out(static_cast<size_t>(n_heads * hd) * 4),
      scratch(cuda::attention_scratch_floats(1, n_heads, hd, depth) * 4),
      counters(cuda::attention_counters(1, n_heads) * 4, 0);
  cudaMemcpy(dtable.p, table.data(), table.size() * 4, cudaMemcpyHostToDevice);
  const auto last = static_cast<int32_t>(depth - 1);
  cudaMemcpy(positions.p, &last, 4, cudaMemcpyHostToDevice);
  const cuda::DeviceKv kv{layout, pool.as<uint8_t>(), dtable.as<int32_t>(), static_cast<int32_t>(pages)};
  time_iterations(state, [&] {
    cuda::attention(kv, 0, q.as<float>(), 1, n_heads, n_kv_heads, positions.as<int32_t>(), slots.as<int32_t>(), true,
                    0, depth, out.as<float>(), nullptr, scratch.as<float>(), counters.as<int>(), nullptr);
  });
  const double kv_bytes = 2.0 * static_cast<double>(depth) * static_cast<double>(n_kv_heads) *
                          (static_cast<double>(layout.row_bytes()) + (type == KvType::q8 || type == KvType::q4 ? 2 : 0));
  state.counters["kv_bytes_per_s"] = benchmark::Counter(kv_bytes, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

// Registers the CUDA benchmarks; returns false (and registers nothing) without a GPU.
bool register_cuda_benchmarks() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) return false;
  struct Shape {
    const char* name;
    int64_t rows, cols;
  };
  const Shape shapes[] = {{"llama-1b.attn_q", 2048, 2048},   {"llama-1b.ffn_down", 2048, 8192},
                          {"llama-1b.output", 32000, 2048},  {"llama2-7b.attn_q", 4096, 4096},
                          {"llama2-7b.ffn_down", 4096, 11008}};
  const Shape gated[] = {{"llama-1b.ffn_gate_up", 8192, 2048}, {"llama2-7b.ffn_gate_up", 11008, 4096}};
  for (DType dtype : {DType::q4, DType::q8, DType::f16}) {
    const std::string d(dtype_name(dtype));
    for (const Shape& s : shapes)
      benchmark::RegisterBenchmark(("cuda/gemv/" + d + "/" + s.name).c_str(), BM_cuda_gemv, dtype, s.rows, s.cols)
          ->UseManualTime()->Unit(benchmark::kMicrosecond);
    for (const Shape& s : gated)
      benchmark::RegisterBenchmark(("cuda/gemv_gated/" + d + "/" + s.name).c_str(), BM_cuda_gemv_gated, dtype, s.rows,
                                   s.cols)
          ->UseManualTime()->Unit(benchmark::kMicrosecond);
  }
  benchmark::RegisterBenchmark("cuda/quantize_acts", BM_cuda_quantize_acts)->Arg(2048)->Arg(4096)->Arg(11008)
      ->UseManualTime()->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("cuda/rms_norm_quantize", BM_cuda_rms_norm_quantize)->Arg(2048)->Arg(4096)
      ->UseManualTime()->Unit(benchmark::kMicrosecond);
  for (KvType type : {KvType::f16, KvType::q8, KvType::q4}) {
    const std::string t(kv_type_name(type));
    benchmark::RegisterBenchmark(("cuda/attention/" + t + "/llama-1b").c_str(), BM_cuda_attention, type, 32, 8, 64)
        ->Arg(512)->Arg(4096)->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("cuda/attention/" + t + "/llama2-7b").c_str(), BM_cuda_attention, type, 32, 32, 128)
        ->Arg(512)->Arg(4096)->UseManualTime()->Unit(benchmark::kMicrosecond);
  }
  return true;
}
