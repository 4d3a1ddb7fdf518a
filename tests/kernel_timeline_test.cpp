// The graph timeline's arithmetic (runtime/kernel_timeline.h) on made-up spans.
#include <gtest/gtest.h>

#include "runtime/kernel_timeline.h"

namespace kvant {
namespace {

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
    spans.push_back({"a", t0, t0 + 10000, 7, 1});
    spans.push_back({"b", t0 + 2000, t0 + 15000, 7, 2});
    spans.push_back({"c", t0 + 17000, t0 + 21000, 7, 3});
  }
  spans.push_back({"prefill", 500000, 600000, 0, 0});  // outside a graph: not shown
  const std::string r = kernel_timeline_report(spans);
  EXPECT_NE(r.find("2 replays, 3 kernels each"), std::string::npos) << r;
  // first start 0, last end 121000: 60.5 us per replay, of which (121 - 2 * 19) / 2 idle.
  EXPECT_NE(r.find("60.5 us per replay"), std::string::npos) << r;
  EXPECT_NE(r.find("41.5 us of it with no kernel running"), std::string::npos) << r;
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
}

TEST(KernelTimeline, SaysSoWhenNothingWasTraced) {
  EXPECT_EQ(kernel_timeline_report({}), "CUDA graph timeline: no graph kernels traced (0 kernels outside graphs)\n");
}

}  // namespace
}  // namespace kvant
