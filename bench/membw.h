// Measured memory read bandwidth: the floor decode speed is judged against.
#pragma once

namespace kvant::bench {

// GB/s of reading a buffer much larger than the caches with `threads` threads
// (best of a few passes).
double measure_read_bandwidth(int threads, double buffer_gb = 1.0);
// GB/s of a device-to-device copy on GPU 0, counting bytes read and written.
double measure_gpu_copy_bandwidth(double buffer_gb = 2.0);

}  // namespace kvant::bench
