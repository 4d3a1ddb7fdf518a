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
  uint32_t blocks = 0;     // the grid's blocks
};

// A readable kernel name: demangled, without kvant's namespaces and the parameter list.
std::string short_kernel_name(const std::string& name);

// The report on the spans of graph kernels (others are counted, not shown). A replay is
// one run of a graph's first node up to the next replay of any graph. The headline gives
// a replay's mean span, the time in it with no kernel running, and the time between
// replays (the host's: median and longest, since one-off work such as a graph's capture
// falls between two of them). Then a table per kernel: launches per replay, mean
// duration, time added per replay and its share of the replays' spans. Then the
// replays of the most replayed graph, kernel by kernel in launch order (the first 20 and
// the last 3): grid, start after the replay's start, duration and time added, each a mean.
std::string kernel_timeline_report(std::vector<KernelSpan> spans);

}  // namespace kvant
