// A terminal progress bar for long work (conversion, weight upload, perplexity).
// Draws on stderr only when stderr is a terminal, at most ~10 times a second; when
// stderr is not a terminal it stays silent, so logs hold only the final summaries.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kvant {

class ProgressBar {
 public:
  // `total` units of work; `unit` "B" shows bytes (KB/MB/GB), anything else counts.
  ProgressBar(std::string label, uint64_t total, std::string unit = "B", bool enabled = true);
  ~ProgressBar();
  void update(uint64_t done, std::string_view detail = {});
  void finish();

 private:
  void draw(std::string_view detail);
  std::string label_, unit_;
  uint64_t total_, done_ = 0;
  bool enabled_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// "1.23 GB", "512.0 MB", "17 B"
std::string format_bytes(double bytes);

}  // namespace kvant
