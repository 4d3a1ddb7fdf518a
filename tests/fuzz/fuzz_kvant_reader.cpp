// libFuzzer target: hostile .kvant images through everything that reads one, as
// kvant-chat would: the reader (checksums repaired first, so mutations reach the
// parser), tensor verification, the tokenizer and chat template in the metadata, the
// model's tensor checks, and a three-token evaluation. Nothing may crash, read out of
// bounds, or allocate what the file merely claims.
#include <cstdint>
#include <vector>

#include "format/reader.h"
#include "runtime/chat_template.h"
#include "runtime/context.h"
#include "runtime/tokenizer.h"
#include "tests/raw_kvant.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvant;
  std::vector<uint8_t> bytes(data, data + size);
  test::repair_checksums(bytes);
  auto opened = KvantFile::from_memory(bytes);
  if (!opened) return 0;
  std::unique_ptr<KvantFile> file = std::move(opened).value();
  (void)file->verify_all();
  for (const auto& t : file->tensors())
    if (file->data(t).size() != t.size) __builtin_trap();

  if (auto tok = Tokenizer::from_metadata(file->metadata())) {
    auto ids = (*tok)->encode("Hello world, naïve café 日本語 <s>");
    if (ids)
      for (int32_t id : *ids)
        if (id < 0 || id >= (*tok)->vocab_size()) __builtin_trap();
  }
  if (auto chat = ChatTemplate::from_metadata(file->metadata())) {
    const std::vector<ChatMessage> messages = {{"system", "Be brief."}, {"user", "Hi"}};
    (void)(*chat)->render(messages, true);
  }

  auto model = Model::from_file(std::move(file));
  if (!model) return 0;
  ContextOptions options;
  options.n_ctx = 32;
  options.threads = 1;
  auto ctx = Context::create(*model, options);
  if (!ctx) return 0;
  auto seq = (*ctx)->new_sequence();
  if (!seq) return 0;
  const auto vocab = static_cast<int32_t>((*model)->config().vocab_size);
  const std::vector<int32_t> tokens = {0, vocab - 1, vocab / 2};
  (void)(*ctx)->eval(*seq, tokens);
  return 0;
}
