// The CUDA backend: a model's weights on the GPU, and an executor that runs the GPU
// part of a plan with the kernels of kernels/cuda, reading the same KV page layout as
// the CPU. Decode steps are captured once as a CUDA graph and replayed.
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "kernels/cuda/kernels.h"
#include "runtime/cpu_executor.h"
#include "runtime/kv_cache.h"
#include "runtime/model.h"
#include "runtime/planner.h"

namespace kvant {

// Whether a CUDA GPU is usable here (and its name).
bool cuda_available(std::string* name = nullptr);

class CudaWeights {
 public:
  // Uploads the embeddings, layers [0, gpu_layers) and, when every layer goes, the head,
  // through pinned staging buffers, with a progress bar on a terminal.
  static Result<std::shared_ptr<const CudaWeights>> upload(const Model& model, int gpu_layers, bool progress);
  ~CudaWeights();

  int gpu_layers() const { return gpu_layers_; }
  uint64_t bytes() const { return bytes_; }
  // The device copy of a host tensor of the model (by its bytes in the mapping).
  cuda::DeviceMatrix matrix(const cpu::WeightMatrix& host) const;
  const float* vec(const float* host) const;
  const float* inv_freq() const { return inv_freq_; }

 private:
  CudaWeights() = default;
  std::unordered_map<const void*, uint8_t*> device_of_;
  std::vector<void*> allocations_;
  float* inv_freq_ = nullptr;
  int gpu_layers_ = 0;
  uint64_t bytes_ = 0;
};

class CudaExecutor {
 public:
  // Allocates the device page pool (layers [0, gpu_layers) of `layout`) and the buffers
  // for batches of up to max_tokens tokens from up to max_seqs sequences.
  static Result<std::unique_ptr<CudaExecutor>> create(const Model& model, std::shared_ptr<const CudaWeights> weights,
                                                      const KvLayout& layout, uint32_t n_pages, int64_t n_ctx,
                                                      int32_t max_seqs, int64_t max_tokens);
  ~CudaExecutor();

  KvPool device_pool();  // for KvCache::add_device_pool
  Status prepare(const Plan& plan);
  // Runs nodes [begin, end); page ids per sequence slot of the batch.
  Status run(const Plan& plan, const BatchInfo& batch, std::span<const std::vector<uint32_t>* const> page_ids,
             size_t begin, size_t end);
  uint8_t* arena() { return arena_; }
  // Copies `floats` floats at arena byte offset `offset` (the logits) to dst and waits for
  // them. Decode-sized reads go through a pinned buffer: into pageable memory the driver
  // staged every read itself.
  Status fetch(int64_t offset, float* dst, size_t floats);
  cudaStream_t stream() const { return stream_; }
  Status synchronize();

  // Greedy decoding of one sequence (Context::greedy): each step replays the plan's
  // decode graph followed by cuda::greedy_next, which makes the step's argmax the next
  // step's token and advances its position on the device. So the host can queue a step
  // before it has read the token of the one before, and its work between tokens
  // (reading a token, the KV cache's bookkeeping, the next launch) overlaps the GPU's
  // instead of adding to every token.
  // Whether the plan can run so (every node on the GPU, graphs not turned off).
  bool can_queue_greedy(const Plan& plan) const;
  // Writes the first step's inputs (a plan that can_queue_greedy): one token of one
  // sequence and its page table.
  Status greedy_begin(const Plan& plan, const BatchInfo& batch, const std::vector<uint32_t>& page_ids);
  // Page `index` of the sequence's table, for positions the queued steps will reach.
  Status greedy_page(size_t index, uint32_t id);
  // Queues the next step (after the last one queued).
  Status greedy_step(const Plan& plan);
  // The token the step at `position` chose (waits for it); at most kGreedySlots - 1
  // steps may be queued after it.
  Result<int32_t> greedy_token(int64_t position);
  // After synchronize(): the logits of the step at `position`, the last or the one
  // before the last queued.
  Status greedy_logits(int64_t position, float* dst);

 private:
  CudaExecutor() = default;
  Status launch_nodes(const Plan& plan, size_t begin, size_t end);
  // Runs node `index` (and returns how many nodes it covered: a norm fused with the
  // quantize that follows it counts two).
  Result<size_t> run_node(const Plan& plan, size_t index, size_t end);
  static bool norm_left_to_gemv(const Plan& plan, size_t index);

  const Model* model_ = nullptr;
  std::shared_ptr<const CudaWeights> weights_;
  KvLayout pool_layout_;
  uint8_t* pool_ = nullptr;
  uint32_t n_pages_ = 0;
  int64_t n_ctx_ = 0, max_tokens_ = 0;
  int32_t max_seqs_ = 0, max_pages_ = 0;
  cudaStream_t stream_ = nullptr;
  uint8_t* arena_ = nullptr;
  int64_t arena_size_ = 0;
  // Batch inputs: device buffers, filled from pinned host buffers before each run.
  int32_t* d_inputs_ = nullptr;  // tokens | positions | slots | output rows | page table
  int32_t* h_inputs_ = nullptr;  // pinned
  size_t input_ints_ = 0;
  float* h_logits_ = nullptr;    // pinned, for fetch
  size_t logit_floats_ = 0;
  float* scratch_ = nullptr;     // attention partials and FFN gate/up rows
  size_t scratch_floats_ = 0;
  int* counters_ = nullptr;      // attention's split counters (kept zero by the kernel)
  // KVANT_CUDA_PROFILE=1: nodes run without graphs, timed by op, reported at exit.
  // KVANT_CUDA_PROFILE=graph: graphs as always, every kernel's span traced through CUPTI
  // and the replays' timeline reported at exit (runtime/kernel_timeline.h).
  bool profile_ = false;
  bool trace_ = false;
  std::map<std::string, std::pair<double, int64_t>> profile_ms_;
  std::unique_ptr<cuda::Gemm> gemm_;
  cuda::RmsNormIn pending_norm_;  // a norm left to the next node's GEMVs (run_node)
  bool single_sequence_ = false;
  int64_t n_tokens_ = 0;
  // Captured decode graphs by (plan id, begin, end, ends with greedy_next).
  struct Captured {
    cudaGraphExec_t exec = nullptr;
  };
  std::map<std::tuple<uint64_t, size_t, size_t, bool>, Captured> graphs_;
  Result<cudaGraphExec_t> graph_of(const Plan& plan, size_t begin, size_t end, bool greedy);
  Status write_inputs(const BatchInfo& batch, std::span<const std::vector<uint32_t>* const> page_ids);
  // Greedy decoding: the tokens chosen, written by the device into mapped pinned memory
  // (slot position % kGreedySlots), an event per slot, and the last two steps' logits.
  static constexpr int kGreedySlots = 4;
  int32_t* greedy_report_ = nullptr;
  cudaEvent_t greedy_done_[kGreedySlots] = {};
  float* greedy_logits_ = nullptr;  // [2, vocab]: the step at position p keeps its logits in row p & 1
  void* greedy_work_ = nullptr;     // cuda::greedy_next's
  int64_t greedy_position_ = 0;     // of the next step to queue
};

}  // namespace kvant
