#include "runtime/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace kvant {

std::string format_bytes(double b) {
  if (b >= 1e9) return fmt::format("{:.2f} GB", b / 1e9);
  if (b >= 1e6) return fmt::format("{:.1f} MB", b / 1e6);
  if (b >= 1e3) return fmt::format("{:.1f} KB", b / 1e3);
  return fmt::format("{:.0f} B", b);
}

ProgressBar::ProgressBar(std::string label, uint64_t total, std::string unit, bool enabled)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      enabled_(enabled && isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_ - std::chrono::seconds(1)) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(uint64_t done, std::string_view detail) {
  done_ = done;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ < std::chrono::milliseconds(100) && done_ < total_) return;
  last_draw_ = now;
  draw(detail);
}

void ProgressBar::draw(std::string_view detail) {
  const double frac = total_ ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<size_t>(filled), '=');
  if (filled < kWidth) bar += '>' + std::string(static_cast<size_t>(kWidth - filled - 1), ' ');
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string amount = unit_ == "B" ? fmt::format("{}/{}", format_bytes(static_cast<double>(done_)),
                                                  format_bytes(static_cast<double>(total_)))
                                    : fmt::format("{}/{} {}", done_, total_, unit_);
  std::string eta;
  if (frac > 0.02 && frac < 1.0) eta = fmt::format(" ETA {:.0f}s", elapsed * (1.0 - frac) / frac);
  std::string d(detail.substr(0, 36));
  fmt::print(stderr, "\r\033[K{} [{}] {:3.0f}% {}{} {}", label_, bar, frac * 100.0, amount, eta, d);
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  done_ = total_;
  draw({});
  fmt::print(stderr, "\n");
}

}  // namespace kvant
