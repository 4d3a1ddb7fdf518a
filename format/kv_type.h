// Element types of the KV cache (kernels/layout.h describes their row encodings).
// Kept free of other includes: CUDA code includes it.
#pragma once

namespace kvant {

enum class KvType { f16, q8, q4, f32 };  // f32: exact, a reference for tests

}  // namespace kvant
