// Which SIMD level the CPU kernels run at. Detected from CPUID at start-up; the
// environment variable KVANT_CPU=scalar|avx2|avx512 forces a lower (or equal) level,
// so every path can be run and compared on one machine.
#pragma once

#include <string_view>
#include <vector>

namespace kvant::cpu {

enum class SimdLevel { scalar = 0, avx2 = 1, avx512 = 2 };

std::string_view simd_level_name(SimdLevel level);
// Highest level this CPU supports (avx2 means AVX2+FMA+F16C; avx512 means F, BW, VL, DQ
// and VNNI).
SimdLevel detected_simd_level();
// The level kernels use: detected_simd_level(), lowered by KVANT_CPU if set. An
// unknown or unsupported KVANT_CPU value is reported once on stderr and ignored.
SimdLevel active_simd_level();
// Every level this CPU can run, lowest first (for tests).
std::vector<SimdLevel> supported_simd_levels();

}  // namespace kvant::cpu
