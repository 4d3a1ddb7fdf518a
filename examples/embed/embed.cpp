// Embedding kvant through its C++ wrapper (kvant.hpp): a two-turn conversation in one
// session, where the second turn prefills only its new tokens.
//
//   embed MODEL.kvant
#include <kvant.hpp>

#include <cstdio>
#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MODEL.kvant\n", argv[0]);
    return 2;
  }
  try {
    kvant::api::Model model(argv[1]);
    kvant::api::Session session(model);
    kvant_generate_options options;
    kvant_generate_options_init(&options, model.get());
    options.sampling.temperature = 0;  // greedy: the same answer every run
    options.max_tokens = 32;

    std::vector<kvant::api::Message> chat = {{"user", "What is the capital of France?"}};
    std::string answer = session.generate(model.tokenize(model.chat(chat)), &options);
    std::cout << "answer 1: " << answer << "\n";

    chat.push_back({"assistant", answer});
    chat.push_back({"user", "And of Italy?"});
    answer = session.generate(model.tokenize(model.chat(chat)), &options);
    const kvant_session_stats stats = session.stats();
    std::cout << "answer 2: " << answer << "\n";
    std::cout << "turn 2 prefilled " << stats.prompt_tokens << " new tokens, generated " << stats.generated_tokens
              << "\n";
  } catch (const kvant::api::Error& e) {
    std::fprintf(stderr, "embed: %s\n", e.what());
    return 1;
  }
  return 0;
}
