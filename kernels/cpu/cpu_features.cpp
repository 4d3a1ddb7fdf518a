#include "kernels/cpu/cpu_features.h"

#include <cpuid.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace kvant::cpu {

std::string_view simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::scalar: return "scalar";
    case SimdLevel::avx2: return "avx2";
    case SimdLevel::avx512: return "avx512";
  }
  return "?";
}

SimdLevel detected_simd_level() {
  static const SimdLevel level = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni"))
      return SimdLevel::avx512;
    // F16C by CPUID (leaf 1, ECX bit 29): clang's __builtin_cpu_supports does not know "f16c".
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)
      return SimdLevel::avx2;
    return SimdLevel::scalar;
  }();
  return level;
}

SimdLevel active_simd_level() {
  static const SimdLevel level = [] {
    const SimdLevel detected = detected_simd_level();
    const char* env = std::getenv("KVANT_CPU");
    if (!env || !*env) return detected;
    const std::string want(env);
    for (SimdLevel l : {SimdLevel::scalar, SimdLevel::avx2, SimdLevel::avx512}) {
      if (want != simd_level_name(l)) continue;
      if (l > detected) {
        std::fprintf(stderr, "kvant: KVANT_CPU=%s is not supported by this CPU; using %s\n", env,
                     std::string(simd_level_name(detected)).c_str());
        return detected;
      }
      return l;
    }
    std::fprintf(stderr, "kvant: unknown KVANT_CPU=%s (scalar, avx2, avx512); using %s\n", env,
                 std::string(simd_level_name(detected)).c_str());
    return detected;
  }();
  return level;
}

std::vector<SimdLevel> supported_simd_levels() {
  std::vector<SimdLevel> levels;
  for (SimdLevel l : {SimdLevel::scalar, SimdLevel::avx2, SimdLevel::avx512})
    if (l <= detected_simd_level()) levels.push_back(l);
  return levels;
}

}  // namespace kvant::cpu
