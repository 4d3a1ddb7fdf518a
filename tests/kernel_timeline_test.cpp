// The graph timeline's arithmetic (runtime/kernel_timeline.h) on made-up spans.
#include <gtest/gtest.h>

#include <sstream>

#include "runtime/kernel_timeline.h"

namespace kvant {
namespace {

// The numbers after the kernel name on the launch-order line of kernel #index named
// name (blocks, starts, span, adds); empty when there is no such line.
std::vector<double> order_line(const std::string& report, int index, const std::string& name) {
  std::istringstream lines(report.substr(report.find("In launch order")));
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    int i = -1;
    std::string n;
    if (!(words >> i >> n) || i != index || n != name) continue;
    std::vector<double> v;
    for (double x; words >> x;) v.push_back(x);
    return v;
  }
  return {};
}

TEST(KernelTimeline, ShortNamesDropNamespacesAndParameters) {
  // _ZN5kvant4cuda12_GLOBAL__N_111gemv_kernelILi2EEEvPKfi: kvant::cuda::(anonymous)::gemv_kernel<2>(float const*, int)
  EXPECT_EQ(short_kernel_name("_ZN5kvant4cuda12_GLOBAL__N_111gemv_kernelILi2EEEvPKfi"), "gemv_kernel<2>");
  EXPECT_EQ(short_kernel_name("plain_kernel"), "plain_kernel");
  EXPECT_EQ(short_kernel_name("_Z6kernelPf"), "kernel");
}

// Two replays of a graph of three kernels: b starts while a runs (it waits for a), c
// starts after a gap. Per replay: a adds 10 us, b 5 (its end past a's), c 4; 2 us idle.
TEST(KernelTimeline, ChargesEachKernelTheTimeItAdds) {
  std::vector<KernelSpan> spans;
  for (uint64_t t0 : {100000u, 0u}) {  // out of order: the report sorts by start
    spans.push_back({"a", t0, t0 + 10000, 7, 1, 4});
    spans.push_back({"b", t0 + 2000, t0 + 15000, 7, 2, 132});
    spans.push_back({"c", t0 + 17000, t0 + 21000, 7, 3, 1});
  }
  spans.push_back({"prefill", 500000, 600000, 0, 0});  // outside a graph: not shown
  const std::string r = kernel_timeline_report(spans);
  EXPECT_NE(r.find("2 replays, 3 kernels each"), std::string::npos) << r;
  // A replay spans 21 us, 2 of them idle; the host's 79 us between the two replays.
  EXPECT_NE(r.find("a replay spans 21.00 us"), std::string::npos) << r;
  EXPECT_NE(r.find("2.00 us of it with no kernel running; between replays 79.00 us (median; the longest 79.00 us)"),
            std::string::npos)
      << r;
  EXPECT_NE(r.find("(1 kernels outside graphs not shown)"), std::string::npos) << r;
  // rows by time added: a (10), b (5: mean span 13), c (4)
  const size_t a = r.find("\n  a "), b = r.find("\n  b "), c = r.find("\n  c ");
  ASSERT_NE(a, std::string::npos) << r;
  ASSERT_NE(b, std::string::npos) << r;
  ASSERT_NE(c, std::string::npos) << r;
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  EXPECT_NE(r.find("13.00           5.00"), std::string::npos) << r;
  EXPECT_EQ(r.find("prefill"), std::string::npos) << r;
  // In launch order: blocks, start after the replay's, span and added time.
  EXPECT_NE(r.find("In launch order (2 replays of 3 kernels; all)"), std::string::npos) << r;
  EXPECT_EQ(order_line(r, 0, "a"), (std::vector<double>{4, 0, 10, 10})) << r;
  EXPECT_EQ(order_line(r, 1, "b"), (std::vector<double>{132, 2, 13, 5})) << r;
  EXPECT_EQ(order_line(r, 2, "c"), (std::vector<double>{1, 17, 4, 4})) << r;
}

// The launch order follows the most replayed graph's replays of its usual length, and
// elides the middle of a long one; its means are over those replays only.
TEST(KernelTimeline, LaunchOrderOfTheUsualReplay) {
  std::vector<KernelSpan> spans;
  uint64_t t = 0;
  auto replay = [&](uint32_t graph, int kernels, uint64_t each) {
    for (int j = 0; j < kernels; ++j, t += each)
      spans.push_back({"k" + std::to_string(j), t, t + each, graph, static_cast<uint64_t>(100 * graph + j), 8});
    t += 50000;
  };
  replay(3, 30, 1000);
  replay(3, 30, 3000);
  replay(5, 30, 9000);   // another graph, replayed once
  replay(3, 29, 7000);   // a shorter replay of graph 3
  const std::string r = kernel_timeline_report(spans);
  EXPECT_NE(r.find("In launch order (2 replays of 30 kernels; the first 20 and the last 3)"), std::string::npos) << r;
  EXPECT_EQ(order_line(r, 19, "k19"), (std::vector<double>{8, 38, 2, 2})) << r;  // (19 + 57) / 2 us in
  EXPECT_EQ(order_line(r, 27, "k27"), (std::vector<double>{8, 54, 2, 2})) << r;
  EXPECT_TRUE(order_line(r, 20, "k20").empty()) << r;
  EXPECT_TRUE(order_line(r, 26, "k26").empty()) << r;
  EXPECT_NE(r.find("\n  ...\n"), std::string::npos) << r;
  EXPECT_NE(r.find("4 replays, 30 kernels each"), std::string::npos) << r;  // 119 spans / 4
  // The gaps: 50 us three times (the host's), then none longer.
  EXPECT_NE(r.find("between replays 50.00 us (median; the longest 50.00 us)"), std::string::npos) << r;
}

TEST(KernelTimeline, SaysSoWhenNothingWasTraced) {
  EXPECT_EQ(kernel_timeline_report({}), "CUDA graph timeline: no graph kernels traced (0 kernels outside graphs)\n");
}

}  // namespace
}  // namespace kvant
