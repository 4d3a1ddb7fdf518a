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

std::string kernel_timeline_report(std::vector<KernelSpan> spans) {
  const auto outside = std::count_if(spans.begin(), spans.end(), [](const KernelSpan& k) { return k.graph == 0; });
  std::erase_if(spans, [](const KernelSpan& k) { return k.graph == 0 || k.end < k.start; });
  if (spans.empty())
    return fmt::format("CUDA graph timeline: no graph kernels traced ({} kernels outside graphs)\n", outside);
  std::stable_sort(spans.begin(), spans.end(), [](const KernelSpan& a, const KernelSpan& b) { return a.start < b.start; });

  std::map<uint32_t, uint64_t> first_node;  // per graph: the node that starts a replay
  for (const KernelSpan& k : spans) first_node.try_emplace(k.graph, k.node);
  struct Row {
    int64_t launches = 0;
    uint64_t busy = 0, added = 0;
  };
  std::map<std::string, Row> rows;
  int64_t replays = 0;
  uint64_t latest = spans.front().start, added_all = 0;
  for (const KernelSpan& k : spans) {
    if (k.node == first_node[k.graph]) ++replays;
    Row& r = rows[short_kernel_name(k.name)];
    ++r.launches;
    r.busy += k.end - k.start;
    const uint64_t added = k.end > latest ? k.end - std::max(latest, k.start) : 0;
    r.added += added;
    added_all += added;
    latest = std::max(latest, k.end);
  }
  const uint64_t whole = latest - spans.front().start;
  std::vector<std::pair<std::string, Row>> order(rows.begin(), rows.end());
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.second.added > b.second.added; });

  const double per = static_cast<double>(replays);
  std::string out = fmt::format(
      "CUDA graph timeline (CUPTI): {} replays, {} kernels each; {:.1f} us per replay from the first kernel's start to "
      "the last one's end, {:.1f} us of it with no kernel running{}\n",
      replays, static_cast<double>(spans.size()) / per, static_cast<double>(whole) / 1e3 / per,
      static_cast<double>(whole - added_all) / 1e3 / per,
      outside ? fmt::format(" ({} kernels outside graphs not shown)", outside) : std::string());
  out += fmt::format("  {:<60} {:>10} {:>9} {:>14} {:>6}\n", "kernel", "per replay", "mean us", "adds us/replay",
                     "share");
  for (const auto& [name, r] : order)
    out += fmt::format("  {:<60} {:>10.1f} {:>9.2f} {:>14.2f} {:>5.1f}%\n", name.substr(0, 60),
                       static_cast<double>(r.launches) / per,
                       static_cast<double>(r.busy) / 1e3 / static_cast<double>(r.launches),
                       static_cast<double>(r.added) / 1e3 / per,
                       whole ? 100.0 * static_cast<double>(r.added) / static_cast<double>(whole) : 0.0);
  return out;
}

}  // namespace kvant
