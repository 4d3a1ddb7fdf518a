// Nothing lost: kvant-convert writes to <out>.tmp.<pid> and renames it over <out> only
// when complete. Interrupted mid-write, the previous <out> stays byte for byte and no
// partial file appears under its name. SIGINT (and SIGTERM) are caught: the temporary
// file is removed and the exit status is 128 + the signal. SIGKILL cannot be caught: the
// temporary file stays, beside <out> and never under its name, for the user to delete.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <set>
#include <thread>

#include "tests/test_util.h"

namespace kvant {
namespace {

namespace fs = std::filesystem;

struct Interrupted {
  test::ProcessEnd end;
  std::string log;
  std::string temp_path;       // <out>.tmp.<pid>
  uint64_t temp_bytes_seen = 0;  // its size when the signal was sent
};

// Starts `args` writing `out`, waits until its temporary file has data (so the writer
// is mid-file and the signal handler knows the path), then sends `sig`.
Interrupted convert_and_interrupt(const std::vector<std::string>& args, const std::string& out, int sig) {
  Interrupted r;
  const std::string log = out + ".log";
  fs::remove(log);
  const int pid = test::start_process(args, log);
  r.temp_path = out + ".tmp." + std::to_string(pid);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  std::error_code ec;
  while (std::chrono::steady_clock::now() < deadline) {
    const auto size = fs::file_size(r.temp_path, ec);
    if (!ec && size > 0) {
      r.temp_bytes_seen = size;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  kill(pid, sig);
  r.end = test::wait_process(pid);
  const auto text = test::read_file(log);
  r.log.assign(text.begin(), text.end());
  return r;
}

// The conversions to interrupt: the synthetic SmolLM2 shape (135M parameters, written
// without a checkpoint) always; the default model's real checkpoint when fetched.
std::vector<std::pair<std::string, std::vector<std::string>>> conversions(const std::string& out) {
  const std::string convert = test::bin_dir() + "/kvant-convert";
  std::vector<std::pair<std::string, std::vector<std::string>>> v = {
      {"synthetic smollm2-135m", {convert, "--synthetic", "smollm2-135m", "--dtype", "q8", "-j", "1", "-o", out}}};
  const std::string dir = test::default_model_dir();
  if (!dir.empty()) v.push_back({"SmolLM2 checkpoint", {convert, dir, "--dtype", "q8", "-j", "1", "-o", out}});
  return v;
}

// The previous output: a small, valid file (the llama fixture), distinct from what the
// interrupted run writes.
std::string previous_output(const std::string& out) {
  const auto r = test::run_command(test::bin_dir() + "/kvant-convert " + test::fixture_dir("llama") + " --quiet -o " + out);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return out;
}

void expect_only(const std::string& dir, const std::set<std::string>& names) {
  std::set<std::string> found;
  for (const auto& e : fs::directory_iterator(dir)) found.insert(e.path().filename().string());
  EXPECT_EQ(found, names);
}

// Each conversion over a previous output, interrupted by `sig`: the checks every signal
// shares (the previous output byte for byte, nothing else left at its name once the
// temporary file is accounted for), then those of the signal (`check`).
void interrupt_each(int sig, const std::string& tag,
                    const std::function<void(const std::string& what, const Interrupted& r)>& check) {
  const std::string dir = test::temp_dir() + "/" + tag;
  fs::create_directories(dir);
  const std::string out = dir + "/model.kvant";
  for (const auto& [what, args] : conversions(out)) {
    SCOPED_TRACE(what);
    previous_output(out);
    const std::vector<uint8_t> before = test::read_file(out);
    const Interrupted r = convert_and_interrupt(args, out, sig);
    EXPECT_GT(r.temp_bytes_seen, 0u) << "the conversion never started writing: " << r.log;
    EXPECT_TRUE(test::read_file(out) == before) << "the previous output changed";
    check(what, r);
    fs::remove(r.temp_path);
    fs::remove(out + ".log");
    expect_only(dir, {"model.kvant"});
  }
}

TEST(InterruptedConvert, SigintKeepsThePreviousOutputAndRemovesTheTemporaryFile) {
  interrupt_each(SIGINT, "sigint", [](const std::string&, const Interrupted& r) {
    EXPECT_EQ(r.end.signal, 0) << "killed instead of handling SIGINT";
    EXPECT_EQ(r.end.exit_code, 128 + SIGINT) << r.log;
    EXPECT_NE(r.log.find("kvant-convert: interrupted, no output written"), std::string::npos) << r.log;
    EXPECT_FALSE(fs::exists(r.temp_path)) << "temporary file left behind: " << r.temp_path;
  });
}

TEST(InterruptedConvert, SigkillKeepsThePreviousOutputAndLeavesTheTemporaryFileBesideIt) {
  interrupt_each(SIGKILL, "sigkill", [](const std::string& what, const Interrupted& r) {
    EXPECT_EQ(r.end.signal, SIGKILL);
    // SIGKILL cannot be handled: the partial file stays where it was being written,
    // <out>.tmp.<pid>, never at <out>. The user (here the test) deletes it.
    ASSERT_TRUE(fs::exists(r.temp_path)) << r.temp_path;
    std::printf("%s: after SIGKILL the partial file is %s (%.1f MB), beside the previous output\n", what.c_str(),
                r.temp_path.c_str(), static_cast<double>(fs::file_size(r.temp_path)) / 1e6);
  });
}

}  // namespace
}  // namespace kvant
