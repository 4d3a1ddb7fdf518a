// Executes a plan on the CPU: one OpenMP parallel region per evaluation, every node
// split between the threads (rows of matmuls handed out dynamically, attention by
// token and KV head), a barrier between nodes (spin briefly, then sleep).
#pragma once

#include <atomic>
#include <memory>
#include <span>
#include <vector>

#include "format/status.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/layout.h"
#include "runtime/model.h"
#include "runtime/planner.h"

namespace kvant {

// What a plan runs on: the tokens of the batch and where their KV rows live.
struct BatchInfo {
  std::span<const int32_t> tokens;     // n
  std::span<const int32_t> positions;  // n
  std::span<const int32_t> slot;       // n: index into page_tables for each token
  std::vector<uint8_t* const*> page_tables;  // one per sequence in the batch
  std::span<const int32_t> output_rows;      // rows of the batch whose logits are computed
};

class CpuExecutor {
 public:
  // `layout`: the host page pool, which holds layers [first_layer, n_layers).
  CpuExecutor(const Model& model, const KvLayout& layout, int threads, uint32_t first_layer = 0);
  ~CpuExecutor();

  // Sizes the arena for the plan (call before run and before copying tensors in).
  Status prepare(const Plan& plan);
  // Runs nodes [begin, end) of the plan.
  Status run(const Plan& plan, const BatchInfo& batch, size_t begin, size_t end);
  uint8_t* arena() { return arena_; }
  int threads() const { return threads_; }

 private:
  struct RunState;
  void run_node(const Plan& plan, size_t index, RunState& st, int ith, int nth);

  class Barrier {
   public:
    void wait(int n);  // the n threads of the region

   private:
    static constexpr int kSpins = 100;  // pause instructions, ~2 µs
    alignas(64) std::atomic<int> arrived_{0};
    alignas(64) std::atomic<uint32_t> generation_{0};
  };

  const Model& model_;
  KvLayout layout_;
  int threads_;
  uint32_t first_layer_ = 0;
  cpu::SimdLevel simd_;
  uint8_t* arena_ = nullptr;
  int64_t arena_size_ = 0;
  std::vector<std::vector<float>> scratch_;  // per thread
  std::unique_ptr<std::atomic<int64_t>[]> counters_;
  size_t n_counters_ = 0;
  Barrier barrier_;
};

}  // namespace kvant
