#include "bench/membw.h"

#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace kvant::bench {

namespace {
__attribute__((target("avx2"))) uint64_t read_range(const uint8_t* p, size_t n) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  for (size_t i = 0; i + 64 <= n; i += 64) {
    acc0 = _mm256_xor_si256(acc0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    acc1 = _mm256_xor_si256(acc1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
  }
  acc0 = _mm256_xor_si256(acc0, acc1);
  return static_cast<uint64_t>(_mm256_extract_epi64(acc0, 0));
}
}  // namespace

double measure_read_bandwidth(int threads, double buffer_gb) {
  const auto bytes = static_cast<size_t>(buffer_gb * 1e9) / 4096 * 4096;
  auto* buf = static_cast<uint8_t*>(std::aligned_alloc(4096, bytes));
  if (!buf) return 0;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (size_t i = 0; i < bytes; i += 4096) std::memset(buf + i, static_cast<int>(i >> 12), 4096);
  double best = 0;
  volatile uint64_t sink = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    uint64_t total = 0;
#pragma omp parallel num_threads(threads) reduction(^ : total)
    {
      const int ith = omp_get_thread_num(), nth = omp_get_num_threads();
      const size_t per = bytes / static_cast<size_t>(nth) / 64 * 64;
      total ^= read_range(buf + per * static_cast<size_t>(ith), per);
    }
    sink = sink ^ total;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, static_cast<double>(bytes) / s / 1e9);
  }
  std::free(buf);
  return best;
}

}  // namespace kvant::bench
