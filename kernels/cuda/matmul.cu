// Matrix kernels: int8 activation quantization, the register-streaming decode GEMV for
// every weight type (bandwidth-bound: 16-byte loads, several in flight per thread, one
// warp per row; q8/f16 rows go to the copy pipeline of gemv_pipelined.cu where it
// applies), and the prefill GEMM (dequantize to f16, then cuBLAS on tensor cores).
#include <cublas_v2.h>
#include <dlfcn.h>

#include <algorithm>
#include <string>

#include "kernels/cuda/gemv.cuh"

namespace kvant::cuda {

size_t act_bytes(int64_t k) {
  const auto b = static_cast<size_t>(2 * k + (k / 32) * 4 + (k / 16) * 4);
  return (b + 15) / 16 * 16;
}

namespace {

// Four consecutive values per thread (a warp 128 values, four blocks of 32): scale =
// max|x| / 127 per block, round to nearest even.
constexpr int kQuantPer = 4;
__global__ void quantize_acts_kernel(const float* x, int64_t k, uint8_t* out, size_t bytes) {
  grid_dependency_wait();
  launch_dependents();
  const int64_t first = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * kQuantPer;
  const int64_t t = blockIdx.y;
  const int lane = threadIdx.x % kWarp;
  const bool active = first < k;  // k % 32 == 0: lanes past the end leave in whole blocks
  float v[kQuantPer] = {};
  if (active) load_floats<kQuantPer>(x + t * k + first, v);
  quantize_act_lanes<kQuantPer>(v, lane, active, first - static_cast<int64_t>(lane) * kQuantPer, k, out + t * bytes);
}

// Lane partial sums of R rows against NT tokens: the lane takes 16-byte chunks lane,
// lane + 32, ... of each row, in batches of kBatch<D> 16-byte loads (kBatch / R chunks
// of each row). The next batch's loads are issued before the current batch is
// multiplied, so a lane keeps one to two batches in flight (the compiler, left to
// itself, issued each chunk's load next to its arithmetic: one or two loads in flight,
// q4 decode 10% slower). The first batch is loaded before grid_dependency_wait():
// weights are never written by the kernel before, so their latency overlaps it.
// Weights stream through once (ld.global.cs); activations stay in L1.
//
// q4: chunk c is half h = c % 2 of group g = c / 2, bytes [32g + 16h, +16): elements
// 64g + 16h + [0, 16) in the low nibbles, 64g + 32 + 16h + [0, 16) in the high ones
// (FORMAT.md 6.2); nibbles are unsigned, the +8 is removed with the activations' sums.
// q8: chunk c holds elements [16c, 16c + 16) of block c / 2.
// q4 weights take batches of 4 (with 8, q4 decode -4%: registers); q8 and float
// weights 8 (q8 decode +3%; f16 decode 13% faster than with 4 when every kernel launched
// its dependents early).
template <DType D>
constexpr int kBatch = D == DType::q4 ? 4 : 8;

template <DType D, int R, int P>
__device__ __forceinline__ void load_batch(const RowSet<R>& rs, int first, int n, Chunk<R> (&b)[P]) {
#pragma unroll
  for (int j = 0; j < P; ++j)
    if (first + kWarp * j < n) b[j] = load_chunk<D, R>(rs, first + kWarp * j);
}

// The block's first rows (first_group) wait for the kernel before and stage the
// activations (a then points at them): all threads of the block call it then (a
// barrier); warps without rows (active false) leave after that.
template <DType D, int R, int NT, bool kStaged>
__device__ __forceinline__ void row_dot(const RowSet<R>& rs, int64_t k, bool active, bool first_group, Acts& a,
                                        uint8_t* smem, float (*acc)[NT]) {
  constexpr int P = kBatch<D> / R;
  const int lane = threadIdx.x % kWarp;
  const int n = chunk_count<D>(k);
  Chunk<R> cur[P] = {}, next[P] = {};
  if (active) load_batch<D, R, P>(rs, lane, n, cur);
  if (first_group) {
    grid_dependency_wait();
    launch_dependents();
    if constexpr (kStaged) a = stage_acts<D, NT>(a, k, smem);
  }
  if (!active) return;
  for (int first = lane; first < n; first += kWarp * P) {
    load_batch<D, R, P>(rs, first + kWarp * P, n, next);
#pragma unroll
    for (int j = 0; j < P; ++j)
      if (first + kWarp * j < n) dot_chunk<D, R, NT>(cur[j], first + kWarp * j, k, a, acc);
#pragma unroll
    for (int j = 0; j < P; ++j) cur[j] = next[j];
  }
  if constexpr (!kIntActs<D>) {
    for (int64_t e = static_cast<int64_t>(n) * kChunkValues<D> + lane; e < k; e += kWarp) {  // the row's tail
#pragma unroll
      for (int i = 0; i < R; ++i) {
        const uint8_t* wrow = rs.w[i];
        float wv;
        if constexpr (D == DType::f32) wv = reinterpret_cast<const float*>(wrow)[e];
        else if constexpr (D == DType::f16) wv = __half2float(reinterpret_cast<const __half*>(wrow)[e]);
        else wv = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(wrow)[e]);
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[i][t] += wv * a.x[t * k + e];
      }
    }
  }
}

// row_dot for the looping kernels (kPersistent), whose warps take row group after row
// group: the loads run on from one group into the next. cur holds this group's first batch
// on entry (loaded by the caller, or carried from the group before) and the next group's
// (rows nrs, has_next: the warp has rows there) on exit, loaded while this group's last
// batch is multiplied; with row_dot, nothing was in flight during that batch (a 4096-wide
// q4 row pair is two batches). q4 decode on the H100, alternated: 459.7 -> 462.1, 460.3 ->
// 462.8, 460.3 -> 462.8, 460.3 -> 463.1 tok/s.
template <DType D, int R, int NT, bool kStaged, int P>
__device__ __forceinline__ void row_dot_carried(const RowSet<R>& rs, const RowSet<R>& nrs, bool has_next, int64_t k,
                                                bool active, bool first_group, Acts& a, uint8_t* smem, float (*acc)[NT],
                                                Chunk<R> (&cur)[P]) {
  static_assert(kIntActs<D>, "rows of whole chunks: no float tail");
  const int lane = threadIdx.x % kWarp;
  const int n = chunk_count<D>(k);
  Chunk<R> next[P] = {};
  if (first_group) {
    grid_dependency_wait();
    launch_dependents();
    if constexpr (kStaged) a = stage_acts<D, NT>(a, k, smem);
  }
  if (!active) {
    if (has_next) load_batch<D, R, P>(nrs, lane, n, cur);
    return;
  }
  for (int first = lane; first < n; first += kWarp * P) {
    if (first + kWarp * P < n) load_batch<D, R, P>(rs, first + kWarp * P, n, next);
    else if (has_next) load_batch<D, R, P>(nrs, lane, n, next);
#pragma unroll
    for (int j = 0; j < P; ++j)
      if (first + kWarp * j < n) dot_chunk<D, R, NT>(cur[j], first + kWarp * j, k, a, acc);
#pragma unroll
    for (int j = 0; j < P; ++j) cur[j] = next[j];
  }
}

// Up to three matrices of one input and dtype in one launch (q, k, v): block b covers 4
// rows of the matrix its index falls in.
struct GemvTargets {
  const uint8_t* w[3];
  int64_t rows[3];
  float* y[3];
  const float* bias[3];
  int64_t block_end[3];  // cumulative blocks
  int count;
};

// q4 GEMV blocks loop over the row groups (block index b, b + gridDim.x, ...), their
// loads carried from group to group (row_dot_carried): with a grid that fits on the GPU
// at once (gemv_grid) each block stages the activations once and there is no last
// partial wave (q4 decode +8.5% on the H100). Other types keep a block per row group: the
// loop raised their registers (q8 GEMV to ~150) and f16 decode was 7% slower with it, q8
// 3% (measured with every type looping).
template <DType D>
constexpr bool kPersistent = D == DType::q4;

// Element m of one of GemvTargets' arrays, chosen without indexing it: indexed with a
// runtime m, the kernel copied all of its GemvTargets parameter to local memory (128
// bytes per thread at the start) and read the fields back from there.
template <class T>
__device__ __forceinline__ T pick(const T (&a)[3], int m) {
  return m == 0 ? a[0] : m == 1 ? a[1] : a[2];
}

// A warp's R rows in row group b of a GemvTargets launch: the matrix m that b falls in,
// the first row (active: the warp has rows there; rows are a multiple of R, checked on
// the host) and where the rows' quants and scales are.
template <int R>
struct GemvRows {
  RowSet<R> rs;
  int64_t row, rows;
  int m;
  bool active;
};

template <DType D, int R>
__device__ __forceinline__ GemvRows<R> gemv_rows(const GemvTargets& tg, int64_t k, int64_t b) {
  GemvRows<R> r;
  r.m = 0;
  while (r.m + 1 < tg.count && b >= pick(tg.block_end, r.m)) ++r.m;
  const int64_t first = r.m == 0 ? 0 : r.m == 1 ? tg.block_end[0] : tg.block_end[1];
  r.row = ((b - first) * 4 + threadIdx.x / kWarp) * R;
  r.rows = pick(tg.rows, r.m);
  r.active = r.row < r.rows;
#pragma unroll
  for (int i = 0; i < R; ++i) set_row<D>(pick(tg.w, r.m), r.rows, k, r.active ? r.row + i : 0, &r.rs.w[i], &r.rs.s[i]);
  return r;
}

// The warp's sums of acc into y (+ bias; added to y when accumulating): lane 0 stores.
template <int R, int NT>
__device__ __forceinline__ void store_rows(const GemvTargets& tg, const GemvRows<R>& r, float (*acc)[NT],
                                           bool accumulate) {
  const float* bias = pick(tg.bias, r.m);
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      float v = warp_sum(acc[i][t]);
      if (bias) v += bias[r.row + i];
      float* y = pick(tg.y, r.m) + t * r.rows + r.row + i;
      if (threadIdx.x % kWarp == 0) *y = accumulate ? *y + v : v;
    }
}

// R rows per warp (gemv_multi picks R); row_dot waits for the kernel before.
// Blocks per SM the compiler must fit: the q8 GEMV takes 137 registers left alone (3
// blocks per SM); held to 128 (4 blocks) q8 decode went 286 -> 292 tok/s on the H100 (to
// 102, 5 blocks, it spilled: 244). q4, one token: 5 (the carried loads took the row-pair
// kernel from 96 to 128 registers left alone; held, 96 and no spill). Other types and
// token counts: 0, no minimum (a minimum of 1 is not the same: it let the q4 GEMV grow
// from 125 to 132 registers, 3 blocks per SM, decode -6%; 6 blocks per SM for f16
// weights cost 3.5%).
template <DType D, int NT>
constexpr int kGemvMinBlocks = D == DType::q8 ? 4 : D == DType::q4 && NT == 1 ? 5 : 0;

template <DType D, int R, int NT, bool kStaged>
__global__ void __launch_bounds__(128, kGemvMinBlocks<D, NT>) gemv_kernel(GemvTargets tg, int64_t k, Acts acts, bool accumulate) {
  extern __shared__ __align__(16) uint8_t staged[];
  float acc[R][NT];
  auto zero = [&] {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[i][t] = 0.0f;
  };
  if constexpr (kPersistent<D>) {
    constexpr int P = kBatch<D> / R;
    const int64_t groups = pick(tg.block_end, tg.count - 1);
    Chunk<R> cur[P] = {};
    GemvRows<R> here = gemv_rows<D, R>(tg, k, blockIdx.x);
    if (here.active) load_batch<D, R, P>(here.rs, threadIdx.x % kWarp, chunk_count<D>(k), cur);
    for (int64_t b = blockIdx.x; b < groups; b += gridDim.x) {
      const bool more = b + gridDim.x < groups;
      const GemvRows<R> nx = gemv_rows<D, R>(tg, k, more ? b + gridDim.x : b);
      zero();
      row_dot_carried<D, R, NT, kStaged, P>(here.rs, nx.rs, more && nx.active, k, here.active, b == blockIdx.x, acts,
                                            staged, acc, cur);
      if (here.active) store_rows<R, NT>(tg, here, acc, accumulate);
      here = nx;  // a warp past one matrix's end may have rows in the next
    }
  } else {  // one row group: blockIdx.x
    const GemvRows<R> r = gemv_rows<D, R>(tg, k, blockIdx.x);
    zero();
    row_dot<D, R, NT, kStaged>(r.rs, k, r.active, true, acts, staged, acc);
    if (r.active) store_rows<R, NT>(tg, r, acc, accumulate);
  }
}

// out[t][r] = silu(G[r] · x_t) · (U[r] · x_t): one warp computes both rows. q4, one
// token: held to 5 blocks per SM (90 registers; 110 left alone, 4 blocks per SM). More
// tokens keep no minimum (held to 5 blocks, they spilled 8-24 bytes).
template <DType D, int NT>
constexpr int kGatedMinBlocks = D == DType::q4 && NT == 1 ? 5 : 0;
// Row group b's gate and up rows of a warp: returns the row (past the end: no rows).
template <DType D>
__device__ __forceinline__ int64_t gated_rows(const uint8_t* gate, const uint8_t* up, int64_t rows, int64_t k, int64_t b,
                                              RowSet<2>& rs) {
  const int64_t row = b * 4 + threadIdx.x / kWarp;
  set_row<D>(gate, rows, k, row < rows ? row : 0, &rs.w[0], &rs.s[0]);
  set_row<D>(up, rows, k, row < rows ? row : 0, &rs.w[1], &rs.s[1]);
  return row;
}

template <int NT>
__device__ __forceinline__ void store_gated(float (*acc)[NT], int64_t row, int64_t rows, float* out) {
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const float gv = warp_sum(acc[0][t]), uv = warp_sum(acc[1][t]);
    if (threadIdx.x % kWarp == 0) out[t * rows + row] = gv / (1.0f + expf(-gv)) * uv;
  }
}

template <DType D, int NT, bool kStaged>
__global__ void __launch_bounds__(128, kGatedMinBlocks<D, NT>)
    gemv_gated_kernel(const uint8_t* gate, const uint8_t* up, int64_t rows, int64_t k, Acts acts, float* out) {
  extern __shared__ __align__(16) uint8_t staged[];
  // The gate and up rows stream together: one pass, twice the bytes in flight.
  float acc[2][NT];
  auto zero = [&] {
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[0][t] = acc[1][t] = 0.0f;
  };
  RowSet<2> rs;
  int64_t row = gated_rows<D>(gate, up, rows, k, blockIdx.x, rs);
  if constexpr (kPersistent<D>) {
    constexpr int P = kBatch<D> / 2;
    const int64_t groups = (rows + 3) / 4;
    Chunk<2> cur[P] = {};
    if (row < rows) load_batch<D, 2, P>(rs, threadIdx.x % kWarp, chunk_count<D>(k), cur);
    for (int64_t b = blockIdx.x; b < groups; b += gridDim.x) {
      const bool more = b + gridDim.x < groups;
      RowSet<2> nrs;
      const int64_t nrow = gated_rows<D>(gate, up, rows, k, more ? b + gridDim.x : b, nrs);
      zero();
      row_dot_carried<D, 2, NT, kStaged, P>(rs, nrs, more && nrow < rows, k, row < rows, b == blockIdx.x, acts, staged,
                                            acc, cur);
      if (row >= rows) return;  // and so are the warp's later groups
      store_gated<NT>(acc, row, rows, out);
      rs = nrs;
      row = nrow;
    }
  } else {  // one row group: blockIdx.x
    zero();
    row_dot<D, 2, NT, kStaged>(rs, k, row < rows, true, acts, staged, acc);
    if (row < rows) store_gated<NT>(acc, row, rows, out);
  }
}

// The grid of a GEMV kernel of `blocks` row groups: for the looping (kPersistent) types
// as many blocks as fit on the GPU at once (keeping one block slot per SM free for the
// next kernel's early blocks gained only 1.5% over a block per group), else a block per group.
template <DType D, class Kernel>
unsigned gemv_grid(Kernel kernel, int64_t blocks, size_t smem) {
  if constexpr (!kPersistent<D>) {
    return static_cast<unsigned>(blocks);
  } else {
    const int sms = std::max(device_limits().sms, 1);
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 128, smem) != cudaSuccess || per_sm < 1) per_sm = 1;
    return static_cast<unsigned>(std::min<int64_t>(blocks, int64_t{per_sm} * sms));
  }
}

// Shared memory for staging the activations of a GEMV, or 0 to read them from global
// memory (too large, or f32 rows not 16-byte multiples).
template <DType D>
size_t staged_bytes(int64_t k, int64_t nt) {
  const size_t bytes = acts_bytes<D>(k, nt, act_bytes(k));
  return bytes <= kMaxStaged && bytes % 16 == 0 && (kIntActs<D> || k % 4 == 0) ? bytes : 0;
}

template <DType D, int R, int NT>
void launch_gemv_of(const GemvTargets& tg, int64_t k, const Acts& a, bool accumulate, cudaStream_t s) {
  const int64_t blocks = tg.block_end[tg.count - 1];
  if (const size_t smem = staged_bytes<D>(k, NT))
    launch(gemv_kernel<D, R, NT, true>, gemv_grid<D>(gemv_kernel<D, R, NT, true>, blocks, smem), 128, smem, s, tg, k, a,
           accumulate);
  else
    launch(gemv_kernel<D, R, NT, false>, gemv_grid<D>(gemv_kernel<D, R, NT, false>, blocks, 0), 128, 0, s, tg, k, a,
           accumulate);
}

template <int R, int NT>
void launch_gemv(DType dtype, const GemvTargets& tg, int64_t k, const Acts& a, bool accumulate, cudaStream_t s) {
  switch (dtype) {
    case DType::q4: launch_gemv_of<DType::q4, R, NT>(tg, k, a, accumulate, s); break;
    case DType::q8: launch_gemv_of<DType::q8, R, NT>(tg, k, a, accumulate, s); break;
    case DType::f16: launch_gemv_of<DType::f16, R, NT>(tg, k, a, accumulate, s); break;
    case DType::bf16: launch_gemv_of<DType::bf16, R, NT>(tg, k, a, accumulate, s); break;
    case DType::f32: launch_gemv_of<DType::f32, R, NT>(tg, k, a, accumulate, s); break;
  }
}

template <DType D, int NT>
void launch_gated_of(const DeviceMatrix& g, const DeviceMatrix& u, const Acts& a, float* out, cudaStream_t s) {
  const int64_t blocks = (g.rows + 3) / 4;
  if (const size_t smem = staged_bytes<D>(g.cols, NT))
    launch(gemv_gated_kernel<D, NT, true>, gemv_grid<D>(gemv_gated_kernel<D, NT, true>, blocks, smem), 128, smem, s, g.data,
           u.data, g.rows, g.cols, a, out);
  else
    launch(gemv_gated_kernel<D, NT, false>, gemv_grid<D>(gemv_gated_kernel<D, NT, false>, blocks, 0), 128, 0, s, g.data,
           u.data, g.rows, g.cols, a, out);
}

template <int NT>
void launch_gated(const DeviceMatrix& g, const DeviceMatrix& u, const Acts& a, float* out, cudaStream_t s) {
  switch (g.dtype) {
    case DType::q4: launch_gated_of<DType::q4, NT>(g, u, a, out, s); break;
    case DType::q8: launch_gated_of<DType::q8, NT>(g, u, a, out, s); break;
    case DType::f16: launch_gated_of<DType::f16, NT>(g, u, a, out, s); break;
    case DType::bf16: launch_gated_of<DType::bf16, NT>(g, u, a, out, s); break;
    case DType::f32: launch_gated_of<DType::f32, NT>(g, u, a, out, s); break;
  }
}

// ---- dequantization for the GEMM ----------------------------------------------------

// One thread per 16 bytes of quants: q4 -> 32 halves (two 16-element runs), q8 -> 16.
// The quants become halves with integer bit tricks (a nibble n or a biased byte u in the
// mantissa of 1024: 0x6400 | n is 1024 + n) and half2 arithmetic, two values per
// instruction; d·q is exact in f32 and rounded once either way, so the halves equal
// __float2half_rn(d · q). The weights are read before the grid-dependency wait (nothing
// writes them); only the stores into the shared f16 buffer wait for the GEMM before.
__device__ __forceinline__ __half2 nibbles_to_half2(uint32_t two_bytes_spread, __half2 d) {
  // two_bytes_spread: 0x00bb00aa; the low nibbles of a and b, each as 1024 + n - 1032 = n - 8
  const uint32_t bits = (two_bytes_spread & 0x000f000fu) | 0x64006400u;
  return __hmul2(__hsub2(*reinterpret_cast<const __half2*>(&bits), __half2half2(__ushort_as_half(0x6408))), d);
}

// A warp's 32 chunks make one contiguous run of output (q4: 32 · 64 bytes, q8: 32 · 32),
// but a lane's own pieces are 16 bytes here and there in it: stored directly, each store
// instruction of the warp touched 16-byte halves of sectors all over the run, and the q4
// kernel moved 1.5 TB/s (with a thread per 128-byte group, 0.9). So the warp puts its
// pieces in shared memory and stores the run with consecutive lanes on consecutive 16
// bytes. piece[j] goes to 16-byte slot at[j] of the run; a warp with inactive lanes (the
// tensor's last chunks) stores directly.
template <int P>
__device__ __forceinline__ void store_run(const uint4 (&piece)[P], const int (&at)[P], bool active, bool whole_warp,
                                          uint4* run, uint4* stage) {
  const int lane = threadIdx.x % kWarp;
  if (!whole_warp) {
#pragma unroll
    for (int j = 0; j < P && active; ++j) run[at[j]] = piece[j];
    return;
  }
#pragma unroll
  for (int j = 0; j < P; ++j) stage[at[j]] = piece[j];
  __syncwarp();
#pragma unroll
  for (int j = 0; j < P; ++j) run[j * kWarp + lane] = stage[j * kWarp + lane];
}

constexpr int kDequantThreads = 256;

__global__ void __launch_bounds__(kDequantThreads) dequantize_q4_f16_kernel(const uint8_t* t, int64_t rows, int64_t cols,
                                                                            __half* out) {
  __shared__ uint4 stage[kDequantThreads * 4];  // 4 pieces of 16 bytes per lane
  const int64_t chunk = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t chunks = rows * cols / 32;
  const bool active = chunk < chunks;
  const int64_t per_row = cols / 32;
  const int64_t r = active ? chunk / per_row : 0, c = chunk % per_row, g = c / 2, h = c % 2;
  uint4 packed = {};
  __half2 d_lo = {}, d_hi = {};
  if (active) {
    packed = *reinterpret_cast<const uint4*>(t + r * cols / 2 + c * 16);
    const __half* scales = reinterpret_cast<const __half*>(t + rows * cols / 2) + r * (cols / 32);
    d_lo = __half2half2(scales[2 * g]);
    d_hi = __half2half2(scales[2 * g + 1]);
  }
  grid_dependency_wait();
  const int64_t warp_first = chunk - threadIdx.x % kWarp;
  if (warp_first >= chunks) return;
  const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
  __half2 lo[8], hi[8];  // elements 16h + [0, 16) and 32 + 16h + [0, 16) of the group
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t b01 = __byte_perm(words[j], 0, 0x4140), b23 = __byte_perm(words[j], 0, 0x4342);
    lo[2 * j] = nibbles_to_half2(b01, d_lo);
    lo[2 * j + 1] = nibbles_to_half2(b23, d_lo);
    hi[2 * j] = nibbles_to_half2(b01 >> 4, d_hi);
    hi[2 * j + 1] = nibbles_to_half2(b23 >> 4, d_hi);
  }
  // Chunks 2G and 2G + 1 (group G of the whole tensor) fill halves [64G, 64G + 64): this
  // lane's 16-byte slots are 8·(lane / 2) + 2h + {0, 1} (low) and + 4 (high).
  const int lane = threadIdx.x % kWarp;
  const int base = 8 * (lane / 2) + 2 * static_cast<int>(h);
  const uint4 piece[4] = {reinterpret_cast<const uint4*>(lo)[0], reinterpret_cast<const uint4*>(lo)[1],
                          reinterpret_cast<const uint4*>(hi)[0], reinterpret_cast<const uint4*>(hi)[1]};
  const int at[4] = {base, base + 1, base + 4, base + 5};
  store_run<4>(piece, at, active, warp_first + kWarp <= chunks, reinterpret_cast<uint4*>(out + warp_first * 32),
               stage + (threadIdx.x / kWarp) * kWarp * 4);
}

__global__ void __launch_bounds__(kDequantThreads) dequantize_q8_f16_kernel(const uint8_t* t, int64_t rows, int64_t cols,
                                                                            __half* out) {
  __shared__ uint4 stage[kDequantThreads * 2];
  const int64_t chunk = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t n = rows * cols, chunks = n / 16;
  const bool active = chunk < chunks;
  uint4 q = {};
  __half2 d = {};
  if (active) {
    q = *reinterpret_cast<const uint4*>(t + chunk * 16);
    d = __half2half2(reinterpret_cast<const __half*>(t + n)[chunk / 2]);
  }
  grid_dependency_wait();
  const int64_t warp_first = chunk - threadIdx.x % kWarp;
  if (warp_first >= chunks) return;
  const uint32_t words[4] = {q.x ^ 0x80808080u, q.y ^ 0x80808080u, q.z ^ 0x80808080u, q.w ^ 0x80808080u};
  const __half2 bias = __half2half2(__ushort_as_half(0x6480));  // 1024 + 128
  __half2 o[8];
#pragma unroll
  for (int j = 0; j < 4; ++j) {  // byte b + 128 as 1024 + (b + 128), less 1152
    const uint32_t b01 = __byte_perm(words[j], 0, 0x4140) | 0x64006400u;
    const uint32_t b23 = __byte_perm(words[j], 0, 0x4342) | 0x64006400u;
    o[2 * j] = __hmul2(__hsub2(*reinterpret_cast<const __half2*>(&b01), bias), d);
    o[2 * j + 1] = __hmul2(__hsub2(*reinterpret_cast<const __half2*>(&b23), bias), d);
  }
  const int lane = threadIdx.x % kWarp;
  const uint4 piece[2] = {reinterpret_cast<const uint4*>(o)[0], reinterpret_cast<const uint4*>(o)[1]};
  const int at[2] = {2 * lane, 2 * lane + 1};
  store_run<2>(piece, at, active, warp_first + kWarp <= chunks, reinterpret_cast<uint4*>(out + warp_first * 16),
               stage + (threadIdx.x / kWarp) * kWarp * 2);
}

// Four values per thread where vec (n % 4 == 0 and x 16-byte aligned), else one.
__global__ void to_half_kernel(const float* x, int64_t n, bool vec, __half* out) {
  grid_dependency_wait();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (vec) {
    if (4 * i >= n) return;
    const float4 v = reinterpret_cast<const float4*>(x)[i];
    const __half2 h[2] = {__floats2half2_rn(v.x, v.y), __floats2half2_rn(v.z, v.w)};
    reinterpret_cast<uint2*>(out)[i] = *reinterpret_cast<const uint2*>(h);
  } else if (i < n) {
    out[i] = __float2half_rn(x[i]);
  }
}

// n floats at x to halves at out (round to nearest even), four per thread where it can.
void to_half(const float* x, int64_t n, __half* out, cudaStream_t stream) {
  const bool vec = n % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  launch(to_half_kernel, blocks_for(vec ? n / 4 : n, 256), 256, 0, stream, x, n, vec, out);
}

__global__ void to_bf16_kernel(const float* x, int64_t n, __nv_bfloat16* out) {
  grid_dependency_wait();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = __float2bfloat16_rn(x[i]);
}


}  // namespace

void quantize_acts(const float* x, int64_t n, int64_t k, uint8_t* out, cudaStream_t stream) {
  if (n == 0) return;
  const dim3 grid(blocks_for(k / kQuantPer, 256), static_cast<unsigned>(n));
  launch(quantize_acts_kernel, grid, 256, 0, stream, x, k, out, act_bytes(k));
}

void gemv(const DeviceMatrix& w, const float* x, const uint8_t* xq, int64_t n, float* y, int64_t ldy, bool accumulate,
          cudaStream_t stream) {
  const DeviceMatrix* ws[1] = {&w};
  float* ys[1] = {y};
  const float* bs[1] = {nullptr};
  (void)ldy;  // rows: y is [n, rows]
  gemv_multi(ws, ys, bs, 1, x, xq, n, accumulate, stream);
}

void gemv_multi(const DeviceMatrix* const* w, float* const* y, const float* const* bias, int count, const float* x,
                const uint8_t* xq, int64_t n, bool accumulate, cudaStream_t stream, const RmsNormIn* norm) {
  if (gemv_pipelined(w, y, bias, count, x, xq, n, accumulate, stream, norm)) return;
  if (norm) rms_norm_quantize(*norm, n, w[0]->cols, stream);
  // Two rows per warp when every matrix has an even number of rows and enough of them
  // to fill the GPU (more bytes in flight per warp); one row otherwise.
  int64_t total = 0;
  bool even = true;
  for (int i = 0; i < count; ++i) {
    total += w[i]->rows;
    even = even && w[i]->rows % 2 == 0;
  }
  const int r = even && total >= 4096 && n <= 2 ? 2 : 1;
  GemvTargets tg{};
  tg.count = count;
  int64_t blocks = 0;
  for (int i = 0; i < count; ++i) {
    tg.w[i] = w[i]->data;
    tg.rows[i] = w[i]->rows;
    tg.y[i] = y[i];
    tg.bias[i] = bias[i];
    blocks += (w[i]->rows + 4 * r - 1) / (4 * r);
    tg.block_end[i] = blocks;
  }
  by_tokens(n, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    const Acts a{xq, act_bytes(w[0]->cols), x};
    if (r == 2) launch_gemv<2, NT>(w[0]->dtype, tg, w[0]->cols, a, accumulate, stream);
    else launch_gemv<1, NT>(w[0]->dtype, tg, w[0]->cols, a, accumulate, stream);
  });
}

void gemv_gated(const DeviceMatrix& gate, const DeviceMatrix& up, const float* x, const uint8_t* xq, int64_t n, float* out,
                cudaStream_t stream, const RmsNormIn* norm) {
  if (gemv_gated_pipelined(gate, up, x, xq, n, out, stream, norm)) return;
  if (norm) rms_norm_quantize(*norm, n, gate.cols, stream);
  const Acts a{xq, act_bytes(gate.cols), x};
  by_tokens(n, [&](auto nt) { launch_gated<decltype(nt)::value>(gate, up, a, out, stream); });
}

void dequantize_to_f16(const DeviceMatrix& w, void* out, cudaStream_t stream) {
  const int64_t n = w.rows * w.cols;
  auto* o = static_cast<__half*>(out);
  switch (w.dtype) {
    case DType::f16: cudaMemcpyAsync(out, w.data, static_cast<size_t>(n) * 2, cudaMemcpyDeviceToDevice, stream); return;
    case DType::q4:
      launch(dequantize_q4_f16_kernel, blocks_for(n / 32, kDequantThreads), kDequantThreads, 0, stream, w.data, w.rows, w.cols, o);
      return;
    case DType::q8:
      launch(dequantize_q8_f16_kernel, blocks_for(n / 16, kDequantThreads), kDequantThreads, 0, stream, w.data, w.rows, w.cols, o);
      return;
    case DType::f32: to_half(reinterpret_cast<const float*>(w.data), n, o, stream); return;
    case DType::bf16: return;  // the GEMM multiplies bf16 directly
  }
}

namespace {

// cuBLAS is loaded when the first GEMM is made, not linked: a linked libcublas costs
// every process ~150 MB of resident memory at start (relocated data of a 600 MB
// library), CPU-only runs included.
struct CublasApi {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                            const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                            cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
  std::string error;
};

const CublasApi& cublas() {
  static const CublasApi api = [] {
    CublasApi a;
    void* lib = nullptr;
    for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"})
      if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
    if (!lib) {
      a.error = std::string("cannot load cuBLAS (libcublas.so.13 or .12): ") + dlerror();
      return a;
    }
    a.create = reinterpret_cast<decltype(a.create)>(dlsym(lib, "cublasCreate_v2"));
    a.destroy = reinterpret_cast<decltype(a.destroy)>(dlsym(lib, "cublasDestroy_v2"));
    a.set_stream = reinterpret_cast<decltype(a.set_stream)>(dlsym(lib, "cublasSetStream_v2"));
    a.set_math_mode = reinterpret_cast<decltype(a.set_math_mode)>(dlsym(lib, "cublasSetMathMode"));
    a.gemm_ex = reinterpret_cast<decltype(a.gemm_ex)>(dlsym(lib, "cublasGemmEx"));
    if (!a.create || !a.destroy || !a.set_stream || !a.set_math_mode || !a.gemm_ex) a.error = "cuBLAS lacks a function";
    return a;
  }();
  return api;
}

}  // namespace

Gemm::Gemm() {
  const CublasApi& api = cublas();
  if (!api.error.empty()) return;
  cublasHandle_t h = nullptr;
  if (api.create(&h) == CUBLAS_STATUS_SUCCESS) {
    api.set_math_mode(h, CUBLAS_DEFAULT_MATH);
    handle_ = h;
  }
}

Gemm::~Gemm() {
  if (handle_) cublas().destroy(static_cast<cublasHandle_t>(handle_));
  cudaFree(weights_);
  cudaFree(acts_);
}

const char* Gemm::run(const DeviceMatrix& w, const float* x, int64_t n, float* y, int64_t ldy, bool accumulate,
                      cudaStream_t stream) {
  const DeviceMatrix* ws[1] = {&w};
  float* ys[1] = {y};
  return run_shared(ws, ys, 1, x, n, ldy, accumulate, stream);
}

const char* Gemm::run_shared(const DeviceMatrix* const* ws, float* const* ys, int count, const float* x, int64_t n,
                             int64_t ldy, bool accumulate, cudaStream_t stream) {
  if (!handle_) return cublas().error.empty() ? "cuBLAS could not be initialised" : cublas().error.c_str();
  const CublasApi& api = cublas();
  auto grow = [](void*& p, size_t& have, size_t need) {
    if (need <= have) return cudaSuccess;
    cudaFree(p);
    p = nullptr;
    have = 0;
    const cudaError_t e = cudaMalloc(&p, need);
    if (e == cudaSuccess) have = need;
    return e;
  };
  auto* h = static_cast<cublasHandle_t>(handle_);
  api.set_stream(h, stream);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  DType converted = DType::f32;  // the type acts_ holds x in (f32: none yet)
  for (int i = 0; i < count; ++i) {
    const DeviceMatrix& w = *ws[i];
    const int ld = static_cast<int>(ldy > 0 ? ldy : w.rows);
    if (w.dtype == DType::f32) {  // f32 models (tests, references): exact f32 products, no conversion
      const cublasStatus_t st = api.gemm_ex(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.rows), static_cast<int>(n),
                                             static_cast<int>(w.cols), &alpha, w.data, CUDA_R_32F, static_cast<int>(w.cols),
                                             x, CUDA_R_32F, static_cast<int>(w.cols), &beta, ys[i], CUDA_R_32F, ld,
                                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      if (st != CUBLAS_STATUS_SUCCESS) return "cublasGemmEx (f32) failed";
      continue;
    }
    const bool bf16 = w.dtype == DType::bf16;
    const void* weights = w.data;
    if (w.dtype != DType::f16 && !bf16) {
      if (grow(weights_, weights_bytes_, static_cast<size_t>(w.rows * w.cols) * 2) != cudaSuccess)
        return "cannot allocate the dequantization buffer";
      dequantize_to_f16(w, weights_, stream);
      weights = weights_;
    }
    // The activations in f16 (bf16 for bf16 weights), converted once for the matrices
    // that share them (q, k and v; gate and up).
    const DType acts_type = bf16 ? DType::bf16 : DType::f16;
    if (converted != acts_type) {
      if (grow(acts_, acts_bytes_, static_cast<size_t>(n * w.cols) * 2) != cudaSuccess)
        return "cannot allocate the activation buffer";
      const int64_t count_x = n * w.cols;
      if (bf16) {
        launch(to_bf16_kernel, blocks_for(count_x, 256), 256, 0, stream, x, count_x, static_cast<__nv_bfloat16*>(acts_));
      } else {
        to_half(x, count_x, static_cast<__half*>(acts_), stream);
      }
      converted = acts_type;
    }
    const cudaDataType type = bf16 ? CUDA_R_16BF : CUDA_R_16F;
    // Row-major Y (n × rows) is column-major Yᵀ (rows × n) = W · Xᵀ.
    const cublasStatus_t st = api.gemm_ex(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.rows), static_cast<int>(n),
                                           static_cast<int>(w.cols), &alpha, weights, type, static_cast<int>(w.cols), acts_,
                                           type, static_cast<int>(w.cols), &beta, ys[i], CUDA_R_32F, ld,
                                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) return "cublasGemmEx failed";
  }
  return nullptr;
}

}  // namespace kvant::cuda
