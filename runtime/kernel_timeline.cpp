#include "runtime/kernel_timeline.h"

#include <cxxabi.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>

namespace kvant {

std::string short_kernel_name(const std::string& name) {
  int status = -1;  // only mangled names (a plain "c" would demangle as the type char)
  std::unique_ptr<char, decltype(&std::free)> demangled(
      name.starts_with("_Z") ? abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status) : nullptr, &std::free);
  std::string s = status == 0 && demangled ? demangled.get() : name;
  if (s.starts_with("void ")) s.erase(0, 5);  // a template's return type
  for (const std::string_view prefix : {"kvant::cuda::(anonymous namespace)::", "kvant::cuda::", "kvant::"})
    for (size_t at; (at = s.find(prefix)) != std::string::npos;) s.erase(at, prefix.size());
  int depth = 0;  // the parameter list: the first '(' outside the template arguments
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<') ++depth;
    else if (s[i] == '>') --depth;
    else if (s[i] == '(' && depth == 0 && i > 0) return s.substr(0, i);
  }
  return s;
}

namespace {

struct Replay {
  size_t first = 0, count = 0;  // its spans in start order
  uint64_t end = 0;             // its last kernel's end
};

std::string us(uint64_t ns, double per = 1.0) { return fmt::format("{:.2f}", static_cast<double>(ns) / 1e3 / per); }

// The key counted most often (the smallest of a tie).
template <class K>
K most_common(const std::map<K, size_t>& counts) {
  return std::max_element(counts.begin(), counts.end(), [](const auto& a, const auto& b) { return a.second < b.second; })
      ->first;
}

}  // namespace

std::string kernel_timeline_report(std::vector<KernelSpan> spans) {
  const auto outside = std::count_if(spans.begin(), spans.end(), [](const KernelSpan& k) { return k.graph == 0; });
  std::erase_if(spans, [](const KernelSpan& k) { return k.graph == 0 || k.end < k.start; });
  if (spans.empty())
    return fmt::format("CUDA graph timeline: no graph kernels traced ({} kernels outside graphs)\n", outside);
  std::stable_sort(spans.begin(), spans.end(), [](const KernelSpan& a, const KernelSpan& b) { return a.start < b.start; });

  // Each span's added time (its end past the latest end before it) and its replay.
  std::map<uint32_t, uint64_t> first_node;  // per graph: the node that starts a replay
  for (const KernelSpan& k : spans) first_node.try_emplace(k.graph, k.node);
  std::vector<uint64_t> added(spans.size());
  std::vector<Replay> replays;
  uint64_t latest = spans.front().start, added_all = 0;
  for (size_t i = 0; i < spans.size(); ++i) {
    const KernelSpan& k = spans[i];
    if (k.node == first_node[k.graph] || replays.empty()) replays.push_back({i, 0, 0});
    Replay& r = replays.back();
    ++r.count;
    r.end = std::max(r.end, k.end);
    added[i] = k.end > latest ? k.end - std::max(latest, k.start) : 0;
    added_all += added[i];
    latest = std::max(latest, k.end);
  }
  uint64_t in_replays = 0;
  std::vector<uint64_t> gaps;  // from a replay's end to the next one's start
  for (size_t i = 0; i < replays.size(); ++i) {
    in_replays += replays[i].end - spans[replays[i].first].start;
    if (i > 0) {
      const uint64_t next = spans[replays[i].first].start, prev = replays[i - 1].end;
      gaps.push_back(next > prev ? next - prev : 0);
    }
  }
  std::sort(gaps.begin(), gaps.end());

  struct Row {
    int64_t launches = 0;
    uint64_t busy = 0, added = 0;
  };
  std::map<std::string, Row> rows;
  for (size_t i = 0; i < spans.size(); ++i) {
    Row& r = rows[short_kernel_name(spans[i].name)];
    ++r.launches;
    r.busy += spans[i].end - spans[i].start;
    r.added += added[i];
  }
  std::vector<std::pair<std::string, Row>> order(rows.begin(), rows.end());
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.second.added > b.second.added; });

  const double per = static_cast<double>(replays.size());
  std::string out = fmt::format(
      "CUDA graph timeline (CUPTI): {} replays, {:.0f} kernels each; a replay spans {} us from its first kernel's start "
      "to its last one's end, {} us of it with no kernel running; {}{}\n",
      replays.size(), static_cast<double>(spans.size()) / per, us(in_replays, per), us(in_replays - added_all, per),
      gaps.empty() ? std::string("one replay")
                   : fmt::format("between replays {} us (median; the longest {} us)", us(gaps[gaps.size() / 2]),
                                 us(gaps.back())),
      outside ? fmt::format(" ({} kernels outside graphs not shown)", outside) : std::string());
  out += fmt::format("  {:<60} {:>10} {:>9} {:>14} {:>6}\n", "kernel", "per replay", "mean us", "adds us/replay",
                     "share");
  for (const auto& [name, r] : order) {
    const double share = in_replays ? 100.0 * static_cast<double>(r.added) / static_cast<double>(in_replays) : 0.0;
    out += fmt::format("  {:<60} {:>10.1f} {:>9} {:>14} {:>5.1f}%\n", name.substr(0, 60),
                       static_cast<double>(r.launches) / per, us(r.busy, static_cast<double>(r.launches)),
                       us(r.added, per), share);
  }

  // Launch order: the replays of the graph replayed most that have its usual kernel count.
  std::map<uint32_t, size_t> times;
  for (const Replay& r : replays) ++times[spans[r.first].graph];
  const uint32_t graph = most_common(times);
  std::map<size_t, size_t> counts;
  for (const Replay& r : replays)
    if (spans[r.first].graph == graph) ++counts[r.count];
  const size_t n = most_common(counts);
  struct Slot {
    uint64_t start = 0, busy = 0, added = 0;
  };
  std::vector<Slot> slots(n);
  size_t used = 0, ref = 0;  // ref: the first such replay's first span, which names the kernels
  for (const Replay& r : replays) {
    if (spans[r.first].graph != graph || r.count != n) continue;
    if (used++ == 0) ref = r.first;
    for (size_t j = 0; j < n; ++j) {
      const KernelSpan& k = spans[r.first + j];
      slots[j].start += k.start - spans[r.first].start;
      slots[j].busy += k.end - k.start;
      slots[j].added += added[r.first + j];
    }
  }
  const size_t head = std::min<size_t>(n, 20), tail = n > head + 3 ? 3 : n - head;
  out += fmt::format("In launch order ({} replays of {} kernels; {}):\n", used, n,
                     tail && head + tail < n ? "the first 20 and the last 3" : "all");
  out += fmt::format("  {:>4}  {:<60} {:>7} {:>10} {:>9} {:>8}\n", "#", "kernel", "blocks", "starts us", "span us",
                     "adds us");
  const double u = static_cast<double>(used);
  for (size_t j = 0; j < n; ++j) {
    if (j >= head && j < n - tail) {
      if (j == head) out += "  ...\n";
      continue;
    }
    const KernelSpan& k = spans[ref + j];
    out += fmt::format("  {:>4}  {:<60} {:>7} {:>10} {:>9} {:>8}\n", j, short_kernel_name(k.name).substr(0, 60), k.blocks,
                       us(slots[j].start, u), us(slots[j].busy, u), us(slots[j].added, u));
  }
  return out;
}

}  // namespace kvant
