#include "runtime/cuda_trace.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <cstdlib>
#include <mutex>
#include <utility>

#if __has_include(<cupti_activity.h>)
#include <cupti_activity.h>
#define KVANT_HAVE_CUPTI 1
#else
#define KVANT_HAVE_CUPTI 0
#endif

namespace kvant {

#if KVANT_HAVE_CUPTI
namespace {

// The CUPTI functions used, looked up in the library once.
struct Cupti {
  decltype(&cuptiActivityRegisterCallbacks) register_callbacks = nullptr;
  decltype(&cuptiActivityEnable) enable = nullptr;
  decltype(&cuptiActivityFlushAll) flush_all = nullptr;
  decltype(&cuptiActivityGetNextRecord) next_record = nullptr;
  decltype(&cuptiGetResultString) result_string = nullptr;
};

struct TraceState {
  std::mutex mutex;  // CUPTI hands buffers back on its own thread
  std::vector<KernelSpan> spans;
  Cupti api;
  bool started = false;
  std::string failure;  // why tracing could not start (once tried)
};

// Never destroyed: CUPTI may hand back its last buffers while the process exits, after
// function-local statics are gone.
TraceState& state() {
  static TraceState* const s = new TraceState;
  return *s;
}

constexpr size_t kBufferBytes = 8 << 20;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  TraceState& s = state();
  {
    std::lock_guard lock(s.mutex);
    CUpti_Activity* record = nullptr;
    while (s.api.next_record(buffer, valid, &record) == CUPTI_SUCCESS) {
      if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
      // Later record versions only append fields: the ones read here stay where they are.
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
      s.spans.push_back({k->name ? k->name : "?", k->start, k->end, k->graphId, k->graphNodeId,
                         static_cast<uint32_t>(k->gridX) * static_cast<uint32_t>(k->gridY) * static_cast<uint32_t>(k->gridZ)});
    }
  }
  std::free(buffer);
}

// By name, as cuBLAS is loaded (kernels/cuda/matmul.cu): the folders come from the
// library path (tools/cuda-lib-path puts the toolkit's CUPTI folder on it).
void* open_cupti() {
  for (const char* lib : {"libcupti.so.13", "libcupti.so"})
    if (void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL)) return h;
  return nullptr;
}

}  // namespace

bool kernel_trace_start(std::string* why) {
  TraceState& s = state();
  std::lock_guard lock(s.mutex);
  if (!s.started && s.failure.empty()) {
    void* h = open_cupti();
    Cupti& a = s.api;
    if (h) {
      a.register_callbacks = reinterpret_cast<decltype(a.register_callbacks)>(dlsym(h, "cuptiActivityRegisterCallbacks"));
      a.enable = reinterpret_cast<decltype(a.enable)>(dlsym(h, "cuptiActivityEnable"));
      a.flush_all = reinterpret_cast<decltype(a.flush_all)>(dlsym(h, "cuptiActivityFlushAll"));
      a.next_record = reinterpret_cast<decltype(a.next_record)>(dlsym(h, "cuptiActivityGetNextRecord"));
      a.result_string = reinterpret_cast<decltype(a.result_string)>(dlsym(h, "cuptiGetResultString"));
    }
    if (!h) {
      s.failure = fmt::format("cannot load libcupti.so.13 ({}); put the CUDA toolkit's CUPTI folder on LD_LIBRARY_PATH",
                              dlerror());
    } else if (!a.register_callbacks || !a.enable || !a.flush_all || !a.next_record || !a.result_string) {
      s.failure = "libcupti lacks the activity API";
    } else {
      CUptiResult r = a.register_callbacks(buffer_requested, buffer_completed);
      if (r == CUPTI_SUCCESS) r = a.enable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
      if (r == CUPTI_SUCCESS) {
        s.started = true;
      } else {
        const char* text = nullptr;
        a.result_string(r, &text);
        s.failure = fmt::format("CUPTI refused kernel tracing: {}", text ? text : "unknown error");
      }
    }
  }
  if (!s.started && why) *why = s.failure;
  return s.started;
}

std::vector<KernelSpan> kernel_trace_take() {
  TraceState& s = state();
  if (!s.started) return {};
  s.api.flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);  // calls buffer_completed: not under the lock
  std::lock_guard lock(s.mutex);
  return std::exchange(s.spans, {});
}

#else

bool kernel_trace_start(std::string* why) {
  if (why) *why = "built without CUPTI's headers";
  return false;
}

std::vector<KernelSpan> kernel_trace_take() { return {}; }

#endif

}  // namespace kvant
