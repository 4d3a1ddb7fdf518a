// Decode GEMV through a copy pipeline (sm_90): a producer warp streams the weights into
// shared memory with bulk asynchronous copies (cp.async.bulk, the copy engine), several
// stages ahead, each stage completing on an mbarrier; consumer warps (Warps below)
// multiply the stages from shared memory with the arithmetic of gemv.cuh and hand them
// back. It takes q8 and f16 weights (pipelinable() says why not q4).
//
// Why: the register-streaming GEMV (matmul.cu) keeps one to two batches of 16-byte loads
// in flight per lane, and nothing at all between a warp's rows: 55-70% of the copy
// bandwidth on the H100 in isolation. Here the bytes in flight per SM are the stages
// the producer has issued (tens of KB, independent of the consumers' registers), and
// the consumers never wait on DRAM while a stage is ready. On the H200, decode: f16
// 238 -> 259 tok/s, q8 358 -> 368 (bench/results/gpu-h200-2026-12-02.md).
//
// Work: the rows are cut into row groups of one matrix (at most Warps::group: consumer
// warps × rows per warp; launch_kernel picks the size that evens the blocks out); a
// stage has room for a whole group (and, for the gated kernel, the up matrix's same
// rows): its quants and its scales are each one contiguous run of the tensor, one copy
// each. Where two such stages do not fit in shared memory, rows are cut
// into pieces of `piece` values, and a stage holds one piece of every row of a group (a
// copy per row). Blocks take row groups b, b + gridDim.x, ... (one block per SM), and a
// warp keeps its rows' sums in registers over the pieces of its group.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <string_view>

#include "kernels/cuda/gemv.cuh"

namespace kvant::cuda {
namespace {

constexpr int kMaxStages = 8;
// Pieces are multiples of 256 values, and so is k: then every row's piece of q4/q8
// scales (piece / 16 bytes) and every copy's address are multiples of 16 bytes, as the
// bulk copy requires.
constexpr int64_t kPieceAlign = 256;
// Shared memory for stages beyond the first two: more would only keep the next
// kernel's blocks off the SM longer (they become resident early, programmatic launch).
constexpr size_t kMaxStageMemory = 160 * 1024;

// The warps of a block and their rows. The copy engine feeds any number of consumers;
// their count is set by what their arithmetic needs to keep up. The kernels that read
// the activations from shared memory: 8 consumer warps of two rows each (the
// activations read once per row pair). Those that keep them in registers (kCached): 15
// consumer warps of one row each (with 8, a q4 version of this kernel issued an
// instruction every ~2.2 cycles per scheduler and held the DRAM at 50-60%; 15 and the producer
// make 4 warps per scheduler, 128 registers each, where 17 warps would leave 96). Gated:
// a warp takes a gate row and its up row. The last warp of a block is the producer.
template <bool kGated, bool kCached>
struct Warps {
  static constexpr int consumers = kCached ? 15 : 8;
  static constexpr int rows_per_warp = kGated || kCached ? 1 : 2;  // of each matrix
  static constexpr int group = consumers * rows_per_warp;         // rows per row group
  static constexpr int rows = kGated ? 2 : rows_per_warp;          // a warp's RowSet
  static constexpr int threads = (consumers + 1) * kWarp;
};

// q8/q4 rows carry f16 block scales after all quants (one per 32 values).
template <DType D>
constexpr bool kScaled = D == DType::q4 || D == DType::q8;

struct PipeTargets {
  const uint8_t* w[3];  // plain: up to three matrices of one input (q, k, v); gated: the gate
  const uint8_t* up;    // gated: the up matrix, rows as w[0]
  int64_t rows[3];
  float* y[3];
  const float* bias[3];
  int64_t group_end[3];  // cumulative row groups (set by launch_kernel for its group size)
  int count;
  int group_rows;        // rows per row group (set by launch_kernel: at most Warps::group)
};

struct PipeShape {
  int64_t k;
  int64_t piece;        // values per piece (the last piece of a row may be shorter)
  int pieces;
  int stages;
  uint32_t quant_stride;  // bytes of a row's piece of quants (values) in a stage
  uint32_t scale_stride;  // bytes of a row's piece of scales (q8/q4), else 0
  uint32_t stage_bytes;
  uint32_t acts_smem;     // bytes of staged activations at the front of shared memory
};

// ---- mbarriers and bulk copies (PTX; sm_90) --------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
#endif
}

// Makes the barriers' initialization visible to the copy engine (the async proxy).
__device__ __forceinline__ void mbar_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
#endif
}

// The producer's arrival, announcing the bytes the stage's copies will complete.
__device__ __forceinline__ void mbar_arrive_expect(uint64_t* bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
#endif
}

// Waits for the completion of the barrier's phase of the given parity.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n\t.reg .pred p;\n\t"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
        "selp.u32 %0, 1, 0, p;\n\t}"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
#endif
}

// An L2 policy for bytes read once (the weights): evicted first, so that the
// activations, the KV cache and the next kernel's inputs stay.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
#endif
  return policy;
}

// bytes (a multiple of 16; both addresses 16-byte aligned) from global to shared
// memory, completing on bar.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar, uint64_t policy) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(
          smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar)), "l"(policy)
      : "memory");
#endif
}

// Orders this thread's shared-memory accesses before later ones of the async proxy.
__device__ __forceinline__ void fence_proxy_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// A barrier of the consumer warps alone (the producer never joins it).
template <int kConsumers>
__device__ __forceinline__ void consumers_sync() {
  asm volatile("bar.sync 1, %0;" ::"r"(kConsumers * kWarp) : "memory");
}

// Row group g: its matrix m and first row.
struct Group {
  int m;
  int64_t first, count;
};
__device__ __forceinline__ Group locate(const PipeTargets& tg, int64_t g) {
  int m = 0;
  while (m + 1 < tg.count && g >= tg.group_end[m]) ++m;
  const int64_t first = (g - (m == 0 ? 0 : tg.group_end[m - 1])) * tg.group_rows;
  return {m, first, min(int64_t{tg.group_rows}, tg.rows[m] - first)};
}

// The stage's part for matrix j (0, or 1: the up matrix): quants [rows][quant_stride],
// then scales [rows][scale_stride].
template <int T>
__device__ __forceinline__ uint8_t* stage_part(uint8_t* stage, const PipeShape& sh, int j) {
  return stage + static_cast<size_t>(j) * T * (sh.quant_stride + sh.scale_stride);
}

// The producer warp: for each (row group, piece) of the block in order, waits for the
// stage to be free, then copies each row's piece (a lane per row and matrix).
template <DType D, bool kGated, int T>
__device__ __forceinline__ void produce(const PipeTargets& tg, const PipeShape& sh, int64_t groups, uint8_t* stages,
                                        uint64_t* full, uint64_t* empty) {
  static_assert(T * (kGated ? 2 : 1) <= kWarp, "a lane per row and matrix");
  const int lane = threadIdx.x % kWarp;
  const uint64_t policy = evict_first_policy();
  const int64_t k = sh.k;
  int it = 0;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const Group grp = locate(tg, g);
    for (int p = 0; p < sh.pieces; ++p, ++it) {
      const int s = it % sh.stages;
      if (it >= sh.stages) mbar_wait(&empty[s], ((it / sh.stages) & 1) ^ 1);
      const int64_t k0 = p * sh.piece, values = min(sh.piece, k - k0);
      const auto qb = static_cast<uint32_t>(row_bytes(D, values)), sb = kScaled<D> ? static_cast<uint32_t>(values / 16) : 0u;
      constexpr int parts = kGated ? 2 : 1;
      if (lane == 0) mbar_arrive_expect(&full[s], static_cast<uint32_t>(parts * grp.count) * (qb + sb));
      __syncwarp();
      if (sh.pieces == 1) {
        // Whole rows: the group's quants and its scales are each one contiguous run, a
        // copy each (many small copies held the copy engine to ~1 TB/s on q4 weights).
        if (lane < parts) {
          const uint8_t* base = lane == 0 ? tg.w[grp.m] : tg.up;
          uint8_t* part = stage_part<T>(stages + static_cast<size_t>(s) * sh.stage_bytes, sh, lane);
          const auto count = static_cast<uint32_t>(grp.count);
          bulk_copy(part, base + grp.first * row_bytes(D, k), count * qb, &full[s], policy);
          if constexpr (kScaled<D>)
            bulk_copy(part + T * sh.quant_stride, base + tg.rows[grp.m] * row_bytes(D, k) + grp.first * (k / 16),
                      count * sb, &full[s], policy);
        }
        continue;
      }
      const int j = lane / T, i = lane % T;
      if (j < parts && i < grp.count) {
        const uint8_t* base = j == 0 ? tg.w[grp.m] : tg.up;
        const int64_t r = grp.first + i;
        uint8_t* part = stage_part<T>(stages + static_cast<size_t>(s) * sh.stage_bytes, sh, j);
        bulk_copy(part + i * sh.quant_stride, base + r * row_bytes(D, k) + row_bytes(D, k0), qb, &full[s], policy);
        if constexpr (kScaled<D>)
          bulk_copy(part + T * sh.quant_stride + i * sh.scale_stride,
                    base + tg.rows[grp.m] * row_bytes(D, k) + r * (k / 16) + k0 / 16, sb, &full[s], policy);
      }
    }
  }
}

// Chunks per lane whose activations a lane can keep in registers (one token, whole rows
// per stage): q8 rows up to 4096 values (8 chunks of 16: 72 registers). A lane
// multiplies the same chunks of every row it sees, so it reads its activations from
// shared memory once per kernel instead of once per row pair (q8 q/k/v on the H200, in
// isolation: 20.5 us streaming, 17.5 pipelined and cached).
template <DType D>
constexpr int kCachedChunks = D == DType::q8 ? 8 : 0;

// y (=, or +=) W x for plain GEMVs; out = silu(gate · x) · (up · x) for the gated one.
// kCached: one token, a stage holds whole rows of at most kCachedChunks · 32 chunks.
template <DType D, int NT, bool kGated, bool kCached>
__global__ void __launch_bounds__(Warps<kGated, kCached>::threads, 1)
    gemv_pipelined_kernel(PipeTargets tg, PipeShape sh, Acts acts, bool accumulate) {
  extern __shared__ __align__(128) uint8_t smem[];
  using W = Warps<kGated, kCached>;
  constexpr int T = W::group;
  constexpr int R = W::rows;
  auto* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + kMaxStages;
  uint8_t* staged_acts = smem + 2 * kMaxStages * sizeof(uint64_t);
  uint8_t* stages = staged_acts + sh.acts_smem;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t groups = tg.group_end[tg.count - 1];

  if (threadIdx.x == 0) {
    for (int s = 0; s < sh.stages; ++s) {
      mbar_init(&full[s], 1);                // the producer's arrival (+ the copies' bytes)
      mbar_init(&empty[s], W::consumers * kWarp);  // every consumer thread arrives
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (warp == W::consumers) {
    // Weights are never written by an earlier kernel: the copies start before the wait.
    launch_dependents();
    produce<D, kGated, T>(tg, sh, groups, stages, full, empty);
    return;
  }

  grid_dependency_wait();
  launch_dependents();
  // The activations, once per block (cp.async by the consumer threads), or their RMSNorm
  // and records made here (RmsNormIn) while the producer's first copies are in flight.
  if constexpr (kIntActs<D>) {
    if (acts.norm_w) stage_normed_acts<NT, W::consumers>(acts, sh.k, staged_acts, [] { consumers_sync<W::consumers>(); });
  }
  if (!kIntActs<D> || !acts.norm_w) {
    const auto* src = kIntActs<D> ? acts.xq : reinterpret_cast<const uint8_t*>(acts.x);
    const size_t bytes = acts_bytes<D>(sh.k, NT, acts.act_stride);
    for (size_t i = threadIdx.x * size_t{16}; i < bytes; i += W::consumers * kWarp * size_t{16})
      copy_async(staged_acts + i, src + i, 16);
    copy_async_wait();
    consumers_sync<W::consumers>();
  }
  const Acts a = kIntActs<D> ? Acts{staged_acts, acts.act_stride, nullptr}
                             : Acts{nullptr, 0, reinterpret_cast<const float*>(staged_acts)};
  constexpr int kCache = kCached ? kCachedChunks<D> : 1;
  ActChunk<D> cache[kCache];
  if constexpr (kCached) {
    const int n = static_cast<int>(sh.k / kChunkValues<D>);
#pragma unroll
    for (int j = 0; j < kCache; ++j)
      if (lane + kWarp * j < n) cache[j] = load_act_chunk<D>(a, lane + kWarp * j, sh.k, 0);
  }

  int it = 0;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const Group grp = locate(tg, g);
    // This warp's rows within the group: rows_per_warp · warp + [0, rows_per_warp) of
    // the matrix, or the gate and up rows `warp`.
    const int row0 = W::rows_per_warp * warp;
    float acc[R][NT];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[i][t] = 0.0f;
    for (int p = 0; p < sh.pieces; ++p, ++it) {
      const int s = it % sh.stages;
      mbar_wait(&full[s], (it / sh.stages) & 1);
      uint8_t* stage = stages + static_cast<size_t>(s) * sh.stage_bytes;
      RowSet<R> rs;
#pragma unroll
      for (int i = 0; i < R; ++i) {
        const int j = kGated ? i : 0, row = kGated ? row0 : row0 + i;
        const uint8_t* part = stage_part<T>(stage, sh, j);
        rs.w[i] = part + row * sh.quant_stride;
        rs.s[i] = kScaled<D> ? reinterpret_cast<const __half*>(part + T * sh.quant_stride + row * sh.scale_stride) : nullptr;
      }
      const int64_t k0 = p * sh.piece;
      const int c0 = static_cast<int>(k0 / kChunkValues<D>);
      const int n = static_cast<int>(min(sh.piece, sh.k - k0) / kChunkValues<D>);
      // Rows past the matrix's end (the last group) read stale shared memory; their
      // sums are not stored.
      if constexpr (kCached) {
#pragma unroll
        for (int j = 0; j < kCache; ++j)
          if (lane + kWarp * j < n) dot_acts<D, R, NT>(load_chunk<D, R, true>(rs, lane + kWarp * j), cache[j], 0, acc);
      } else {
#pragma unroll 2
        for (int c = lane; c < n; c += kWarp) dot_chunk<D, R, NT>(load_chunk<D, R, true>(rs, c), c0 + c, sh.k, a, acc);
      }
      // The stage goes back to the producer: each thread's reads of it are ordered
      // before the copy engine's next writes into it by its own arrival (an arrival
      // releases only the arriving thread's accesses; with one arrival per warp after
      // __syncwarp, compute-sanitizer's racecheck reported every byte as a hazard).
      fence_proxy_async();
      mbar_arrive(&empty[s]);
    }
    if constexpr (kGated) {
      const int64_t row = grp.first + row0;
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float gv = warp_sum(acc[0][t]), uv = warp_sum(acc[1][t]);
        if (lane == 0 && row0 < grp.count) tg.y[0][t * tg.rows[0] + row] = gv / (1.0f + expf(-gv)) * uv;
      }
    } else {
      // As gemv_kernel's stores (matmul.cu), with rows past the matrix's end skipped.
      // One helper for both changed the kernels' machine code: left for a session
      // that can run it on a GPU.
      const int m = grp.m;
      const int64_t ldy = tg.rows[m];
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          float v = warp_sum(acc[i][t]);
          const int64_t row = grp.first + row0 + i;
          if (lane == 0 && row0 + i < grp.count) {
            if (tg.bias[m]) v += tg.bias[m][row];
            float* y = tg.y[m] + t * ldy + row;
            *y = accumulate ? *y + v : v;
          }
        }
    }
  }
}


// The pieces and stages for rows of k values of type D; false when the activations and
// two stages do not fit in shared memory. Whole rows per stage where two such stages
// fit (two copies per matrix and stage), else the fewest pieces that fit.
template <DType D, bool kGated, bool kCached>
bool plan_pipeline(int64_t k, int64_t nt, size_t act_stride, PipeShape* sh) {
  constexpr int rows = Warps<kGated, kCached>::group * (kGated ? 2 : 1);  // rows of all parts in a stage
  sh->k = k;
  sh->acts_smem = static_cast<uint32_t>((acts_bytes<D>(k, nt, act_stride) + 127) / 128 * 128);
  const size_t fixed = 2 * kMaxStages * sizeof(uint64_t) + sh->acts_smem;
  const size_t limit = device_limits().smem_optin;
  if (fixed >= limit) return false;
  const size_t room = limit - fixed;
  for (sh->pieces = 1; sh->pieces <= 64; ++sh->pieces) {
    sh->piece = ((k + sh->pieces - 1) / sh->pieces + kPieceAlign - 1) / kPieceAlign * kPieceAlign;
    if ((k + sh->piece - 1) / sh->piece != sh->pieces) continue;  // rounding left a piece empty
    sh->quant_stride = static_cast<uint32_t>(row_bytes(D, sh->piece));
    sh->scale_stride = kScaled<D> ? static_cast<uint32_t>(sh->piece / 16) : 0u;
    sh->stage_bytes = (static_cast<uint32_t>(rows) * (sh->quant_stride + sh->scale_stride) + 127) / 128 * 128;
    if (2 * size_t{sh->stage_bytes} <= room) break;
  }
  if (sh->pieces > 64) return false;
  sh->stages = static_cast<int>(std::clamp<size_t>(std::min(room, kMaxStageMemory) / sh->stage_bytes, 2, kMaxStages));
  return true;
}

template <DType D, int NT, bool kGated, bool kCached>
bool launch_kernel(PipeTargets tg, const PipeShape& sh, const Acts& a, bool accumulate, cudaStream_t stream) {
  using W = Warps<kGated, kCached>;
  const size_t smem = 2 * kMaxStages * sizeof(uint64_t) + sh.acts_smem + static_cast<size_t>(sh.stages) * sh.stage_bytes;
  auto* kernel = gemv_pipelined_kernel<D, NT, kGated, kCached>;
  static const bool opted_in = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    static_cast<int>(device_limits().smem_optin)) == cudaSuccess;
  if (!opted_in) return false;
  // Rows per group: with W::group rows (15), the 4096 rows of a 7B output projection make
  // 274 groups, three for ten of 132 blocks and two for the rest (the busiest block 45
  // rows, the mean 31); groups of 11 rows give at most 33. The size that makes the
  // busiest block's rows (plus one per group, its stage's cost) fewest, the largest of
  // equals: q/k/v and gate·up take 14. H100, q8 decode 317.09 -> 319.70 tok/s (+0.82%).
  // set_groups(r): the row groups of r rows (tg.group_rows, the cumulative group_end), their count.
  auto set_groups = [&](int rows_per_group) {
    int64_t groups = 0;
    for (int i = 0; i < tg.count; ++i) {
      groups += (tg.rows[i] + rows_per_group - 1) / rows_per_group;
      tg.group_end[i] = groups;
    }
    tg.group_rows = rows_per_group;
    return groups;
  };
  const int64_t sms = std::max(device_limits().sms, 1);
  int best_rows = W::group;
  int64_t best = std::numeric_limits<int64_t>::max();
  for (int r = W::group; r >= std::max(1, W::group / 2); --r) {
    const int64_t rounds = (set_groups(r) + sms - 1) / sms, cost = rounds * (r + 1);
    if (cost < best) {
      best = cost;
      best_rows = r;
    }
  }
  const int64_t groups = set_groups(best_rows);
  launch(kernel, static_cast<unsigned>(std::min<int64_t>(groups, sms)), W::threads, smem, stream, tg,
         sh, a, accumulate);
  return true;
}

template <DType D, int NT, bool kGated>
bool launch_pipelined_of(const PipeTargets& tg, int64_t k, const Acts& a, bool accumulate, cudaStream_t stream) {
  PipeShape sh{};
  if constexpr (NT == 1 && kCachedChunks<D> > 0) {
    if (k / kChunkValues<D> <= int64_t{kWarp} * kCachedChunks<D> && plan_pipeline<D, kGated, true>(k, NT, a.act_stride, &sh) &&
        sh.pieces == 1)
      return launch_kernel<D, NT, kGated, true>(tg, sh, a, accumulate, stream);
  }
  if (!plan_pipeline<D, kGated, false>(k, NT, a.act_stride, &sh)) return false;
  return launch_kernel<D, NT, kGated, false>(tg, sh, a, accumulate, stream);
}

template <bool kGated>
bool launch_pipelined(DType dtype, int64_t n, const PipeTargets& tg, int64_t k, const Acts& a, bool accumulate,
                      cudaStream_t stream) {
  bool done = false;
  auto by_type = [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    switch (dtype) {
      case DType::q8: done = launch_pipelined_of<DType::q8, NT, kGated>(tg, k, a, accumulate, stream); break;
      case DType::f16: done = launch_pipelined_of<DType::f16, NT, kGated>(tg, k, a, accumulate, stream); break;
      default: break;
    }
  };
  by_tokens(n, by_type);
  return done;
}

// KVANT_CUDA_GEMV=streaming starts with the switch off (measurements of both paths).
std::atomic<bool> pipelined_enabled{[] {
  const char* v = std::getenv("KVANT_CUDA_GEMV");
  return !(v && std::string_view(v) == "streaming");
}()};

// Whether the pipelined kernels take these matrices: an sm_90 device, q8/f16 weights of
// one type and row length, k a multiple of kPieceAlign, 16-byte aligned data.
//
// q4 weights stay with the register-streaming kernels: their products cost ~4
// instructions per weight byte (two dp4a per four values, nibble unpacking, the
// residual byte), so a stage is consumed slower than it arrives, and a block of ~150 KB
// of stages cannot share its SM with the kernels before and after it, which the
// streaming kernels' small blocks do (programmatic launch). Measured on the H200
// (bench/results/gpu-h200-2026-12-02.md): in isolation the pipelined q4 kernels were
// faster for q/k/v (12.6 against 13.9 us) and gate/up (17.4 against 19.7), level for
// the output projection, slower for the down projection (14.7 against 12.5); in the
// decode graph 5% slower overall (448 against 473 tok/s) in every variant tried (8
// consumer warps reading activations from shared memory, 8 or 15 keeping them in
// registers). A q4 GEMV on the int8 tensor cores (mma.sync m16n8k32, ~90 instructions
// per KB of weights) was 3.5% slower than the streaming kernels too: it left issue-bound
// for latency-bound (bench/results/gpu-h200-2026-12-04.md).
bool pipelinable(const DeviceMatrix* const* w, int count, int64_t n) {
  if (!pipelined_enabled || device_limits().major < 9 || n < 1 || n > kMaxGemvTokens) return false;
  const DType d = w[0]->dtype;
  if (d != DType::q8 && d != DType::f16) return false;
  for (int i = 0; i < count; ++i)
    if (w[i]->dtype != d || w[i]->cols != w[0]->cols || w[i]->cols % kPieceAlign != 0 ||
        reinterpret_cast<uintptr_t>(w[i]->data) % 16 != 0 || w[i]->rows < 1)
      return false;
  return true;
}

// The Acts of a pipelined GEMV; a norm left to it (q8 only: pipelined_norm) its blocks
// make themselves (stage_normed_acts).
Acts pipelined_acts(int64_t k, const float* x, const uint8_t* xq, const RmsNormIn* norm) {
  Acts a{xq, act_bytes(k), x};
  if (norm) {
    a.norm_x = norm->in;
    a.norm_w = norm->w;
    a.eps = norm->eps;
  }
  return a;
}

// Whether the pipelined kernels take this norm (none, or q8 rows: k is a multiple of
// kPieceAlign). Otherwise they launch nothing and the caller runs the norm first.
bool pipelined_norm(DType dtype, const RmsNormIn* norm) { return !norm || dtype == DType::q8; }

}  // namespace

void set_pipelined_gemv(bool enabled) { pipelined_enabled = enabled; }

bool gemv_pipelined(const DeviceMatrix* const* w, float* const* y, const float* const* bias, int count, const float* x,
                    const uint8_t* xq, int64_t n, bool accumulate, cudaStream_t stream, const RmsNormIn* norm) {
  if (count < 1 || count > 3 || !pipelinable(w, count, n) || !pipelined_norm(w[0]->dtype, norm)) return false;
  PipeTargets tg{};
  tg.count = count;
  for (int i = 0; i < count; ++i) {
    tg.w[i] = w[i]->data;
    tg.rows[i] = w[i]->rows;
    tg.y[i] = y[i];
    tg.bias[i] = bias[i];
  }
  return launch_pipelined<false>(w[0]->dtype, n, tg, w[0]->cols, pipelined_acts(w[0]->cols, x, xq, norm), accumulate, stream);
}

bool gemv_gated_pipelined(const DeviceMatrix& gate, const DeviceMatrix& up, const float* x, const uint8_t* xq, int64_t n,
                          float* out, cudaStream_t stream, const RmsNormIn* norm) {
  const DeviceMatrix* ws[2] = {&gate, &up};
  if (gate.rows != up.rows || !pipelinable(ws, 2, n) || !pipelined_norm(gate.dtype, norm)) return false;
  PipeTargets tg{};
  tg.count = 1;
  tg.w[0] = gate.data;
  tg.up = up.data;
  tg.rows[0] = gate.rows;
  tg.y[0] = out;
  return launch_pipelined<true>(gate.dtype, n, tg, gate.cols, pipelined_acts(gate.cols, x, xq, norm), false, stream);
}

}  // namespace kvant::cuda
