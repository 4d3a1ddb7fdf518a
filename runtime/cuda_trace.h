// Kernel spans from CUPTI's activity API, for KVANT_CUDA_PROFILE=graph: the decode graph
// as it replays, every kernel's start and end on the GPU (runtime/kernel_timeline.h sums
// them up). CUPTI is loaded at run time (libcupti.so.13 from the library path), so
// nothing links against it; tracing is process-wide.
#pragma once

#include <string>
#include <vector>

#include "runtime/kernel_timeline.h"

namespace kvant {

// Starts tracing kernels (once per process; later calls only report whether it runs).
// False, with the reason in *why, where CUPTI can't be loaded or refuses.
bool kernel_trace_start(std::string* why);

// The spans recorded since the last call (after flushing CUPTI's buffers).
std::vector<KernelSpan> kernel_trace_take();

}  // namespace kvant
