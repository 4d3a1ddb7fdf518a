// libFuzzer target: hostile tokenizer.json text through the converter's importer and
// the tokenizer loader, then a fixed string through whatever loaded. Nothing may crash.
#include <cstdint>
#include <string>

#include "format/utf8.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvant;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::vector<uint8_t> image = fuzz::tokenizer_image(text);
  if (image.empty()) return 0;
  auto file = KvantFile::from_memory(image);
  if (!file) __builtin_trap();  // the writer's own output must read back
  auto tok = Tokenizer::from_metadata((*file)->metadata());
  if (!tok) return 0;
  for (const char* s : {"Hello world! It's 2024.", "  naïve café 日本語 😀\n\t", "<s>x</s><|im_start|>", ""}) {
    auto ids = (*tok)->encode(s);
    if (!ids) continue;
    for (int32_t id : *ids)
      if (id < 0 || id >= (*tok)->vocab_size()) __builtin_trap();
    if (!is_valid_utf8((*tok)->decode(*ids))) __builtin_trap();
  }
  return 0;
}
