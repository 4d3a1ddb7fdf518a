// libFuzzer target: hostile config.json text into the converter's config parser, then
// what the converter does with an accepted config: the tensor list, where each tensor
// comes from in the checkpoint, and the KV-cache size. Nothing may crash, and an
// accepted config must pass ModelConfig::validate.
#include <cstdint>
#include <nlohmann/json.hpp>

#include "convert/hf_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvant;
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  auto config = convert::parse_hf_config(j, "config.json");
  if (!config) return 0;
  if (!config->validate()) __builtin_trap();
  for (const auto& spec : config->tensor_specs()) {
    const auto source = convert::hf_tensor_source(*config, spec);
    if (source.hf_name.empty()) __builtin_trap();  // every tensor has a source
  }
  for (KvType t : {KvType::f32, KvType::f16, KvType::q8, KvType::q4})
    if (config->kv_bytes_per_token(t) == 0) __builtin_trap();
  return 0;
}
