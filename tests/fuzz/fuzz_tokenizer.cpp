// libFuzzer target: arbitrary bytes into encode (invalid UTF-8 included) and arbitrary
// ids into decode and the streaming decoder, on every fixture tokenizer. Nothing may
// crash; valid text must decode back as decode(encode(text)) does.
#include <cstdint>
#include <cstring>
#include <string_view>

#include "format/utf8.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvant;
  auto& tokenizers = fuzz::fixture_tokenizers();
  if (size < 1) return 0;
  const uint8_t control = data[0];
  const Tokenizer& tok = *tokenizers[control % tokenizers.size()]->tokenizer;
  const bool add_special = control & 0x40;
  const bool skip_special = control & 0x80;
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);

  if (control & 0x20) {  // the bytes are ids
    std::vector<int32_t> ids(rest.size() / 4);
    if (!ids.empty()) std::memcpy(ids.data(), rest.data(), ids.size() * 4);
    // Small ids mostly, so that real tokens come up; keep some wild ones.
    for (size_t i = 0; i < ids.size(); ++i)
      if (i % 3 != 2) ids[i] = static_cast<int32_t>(static_cast<uint32_t>(ids[i]) % 700);
    const std::string text = tok.decode(ids, skip_special);
    if (!is_valid_utf8(text)) __builtin_trap();
    StreamingDecoder stream(tok, skip_special);
    for (int32_t id : ids)
      if (!is_valid_utf8(stream.push(id))) __builtin_trap();
    if (!is_valid_utf8(stream.flush())) __builtin_trap();
    return 0;
  }
  auto ids = tok.encode(rest, add_special);
  if (!ids) {
    if (is_valid_utf8(rest)) __builtin_trap();  // only invalid UTF-8 may fail
    return 0;
  }
  for (int32_t id : *ids)
    if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
  const std::string text = tok.decode(*ids, skip_special);
  if (!is_valid_utf8(text)) __builtin_trap();
  StreamingDecoder stream(tok, skip_special);
  std::string joined;
  for (int32_t id : *ids) joined += stream.push(id);
  joined += stream.flush();
  if (!is_valid_utf8(joined)) __builtin_trap();
  return 0;
}
