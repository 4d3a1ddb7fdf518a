// Shared helpers for the test suites.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace kvant::test {

std::string data_dir();        // tests/data
std::string bin_dir();         // build/bin (the tools)
std::string temp_dir();        // a fresh directory for this test process
std::string fixture_dir(const std::string& name);  // tests/data/fixtures/<name>

// The default model directory (tools/fetch-default-model's cache), or "" when it has
// not been fetched; KVANT_DEFAULT_MODEL overrides.
std::string default_model_dir();

std::vector<uint8_t> read_file(const std::string& path);
void write_file(const std::string& path, const std::vector<uint8_t>& bytes);
bool file_exists(const std::string& path);

struct CommandResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};
CommandResult run_command(const std::string& command);

// A child process run from argv (no shell), stdout and stderr appended to `log_path`.
int start_process(const std::vector<std::string>& argv, const std::string& log_path);  // the pid
struct ProcessEnd {
  int exit_code = -1;           // -1 when killed by a signal
  int signal = 0;               // the signal that killed it, or 0
  uint64_t peak_rss_bytes = 0;  // the child's maximum resident set
};
ProcessEnd wait_process(int pid);

// Whether this binary runs under AddressSanitizer or ThreadSanitizer, which multiply
// memory use and slow everything down (tests of peak RSS or speed skip under them).
bool under_sanitizer();

std::vector<float> gaussian(size_t n, uint64_t seed, float stddev = 1.0f);

}  // namespace kvant::test
