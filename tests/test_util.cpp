#include "tests/test_util.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace kvant::test {

namespace fs = std::filesystem;

// Overridable so that test binaries built here run on another machine (the GPU one).
std::string data_dir() {
  const char* env = std::getenv("KVANT_TEST_DATA_DIR");
  return env && *env ? env : KVANT_TEST_DATA_DIR;
}
std::string bin_dir() {
  const char* env = std::getenv("KVANT_BIN_DIR");
  return env && *env ? env : KVANT_BIN_DIR;
}
std::string fixture_dir(const std::string& name) { return data_dir() + "/fixtures/" + name; }

namespace {
// One directory per test process, removed when the process exits normally
// (KVANT_KEEP_TEST_DIR=1 keeps it for a post-mortem).
struct ProcessTempDir {
  std::string path;
  ProcessTempDir() {
    std::string pattern = (fs::temp_directory_path() / "kvant-test-XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path = pattern;
  }
  ~ProcessTempDir() {
    const char* keep = std::getenv("KVANT_KEEP_TEST_DIR");
    if (keep && *keep && *keep != '0') return;
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};
}  // namespace

std::string temp_dir() {
  static const ProcessTempDir dir;
  return dir.path;
}

std::string default_model_dir() {
  if (const char* env = std::getenv("KVANT_DEFAULT_MODEL")) return env;
  std::string cache;
  if (const char* c = std::getenv("KVANT_CACHE_DIR")) cache = c;
  else if (const char* x = std::getenv("XDG_CACHE_HOME")) cache = std::string(x) + "/kvant";
  else if (const char* h = std::getenv("HOME")) cache = std::string(h) + "/.cache/kvant";
  const std::string dir = cache + "/models/SmolLM2-135M-Instruct";
  return fs::exists(dir + "/.complete") ? dir : "";
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

bool file_exists(const std::string& path) { return fs::exists(path); }

CommandResult run_command(const std::string& command) {
  const std::string full = command + " 2>&1";
  FILE* pipe = popen(full.c_str(), "r");
  if (!pipe) throw std::runtime_error("popen failed: " + command);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

int start_process(const std::vector<std::string>& argv, const std::string& log_path) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

ProcessEnd wait_process(int pid) {
  int status = 0;
  rusage ru{};
  ProcessEnd end;
  if (wait4(pid, &status, 0, &ru) != pid) return end;
  if (WIFEXITED(status)) end.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) end.signal = WTERMSIG(status);
  end.peak_rss_bytes = static_cast<uint64_t>(ru.ru_maxrss) * 1024;
  return end;
}

bool under_sanitizer() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  return true;
#else
  return false;
#endif
#else
  return false;
#endif
}

std::vector<float> gaussian(size_t n, uint64_t seed, float stddev) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

}  // namespace kvant::test
