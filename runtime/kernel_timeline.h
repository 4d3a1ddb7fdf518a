// Where a replayed CUDA graph's time goes: the kernels' spans (start and end on the GPU's
// clock, from CUPTI's activity records: runtime/cuda_trace.cpp) summed up per kernel.
// Each kernel is charged the time it adds to the timeline, its end past the latest end
// before it (kernels that start early and wait, as the decode graph's do, overlap), so
// the charges add up to the time some kernel ran; the rest is time with none running.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvant {

struct KernelSpan {
  std::string name;        // mangled or plain
  uint64_t start = 0, end = 0;  // ns
  uint32_t graph = 0;      // 0: launched outside a graph
  uint64_t node = 0;       // the graph node
};

// A readable kernel name: demangled, without kvant's namespaces and the parameter list.
std::string short_kernel_name(const std::string& name);

// The table for the spans of graph kernels (others are counted, not shown): per kernel,
// launches per graph replay, mean duration, time added per replay and its share. A
// replay is one run of a graph's first node.
std::string kernel_timeline_report(std::vector<KernelSpan> spans);

}  // namespace kvant
