// CUDA kernels of every l2fast op, the optimizer steps included: launch.h's host path with a Device
// that launches on the current stream of the tensors' GPU. The device code is in device.cuh and
// op_functors.cuh.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../entry/entry_points.h"
#include "../entry/optim_step.h"
#include "launch.h"

namespace l2fast::cuda {
namespace {

// Launch tables travel as kernel arguments of up to 32,764 bytes, which needs a driver for CUDA 12.1
// (R530) or newer. Minor-version compatibility lets this build load under an older driver, where
// every launch would fail with a bare "not supported"; this says why, once per process.
void check_driver_takes_large_arguments() {
  static const int driver = [] {
    int version = 0;
    C10_CUDA_CHECK(cudaDriverGetVersion(&version));
    return version;
  }();
  TORCH_CHECK(driver >= 12010, "l2fast: the CUDA kernels take launch tables of up to 32 KB as kernel arguments, "
              "which needs an NVIDIA driver for CUDA 12.1 (R530) or newer; this driver supports CUDA ", driver / 1000,
              ".", driver % 1000 / 10, ". Update the driver, or keep the tensors on the CPU");
}

class CudaDevice {
 public:
  explicit CudaDevice(c10::Device device)
      : guard_(device), device_(device), stream_(at::cuda::getCurrentCUDAStream(device.index())) {
    check_driver_takes_large_arguments();
  }

  at::Tensor empty(int64_t n, at::ScalarType dtype) const {
    return at::empty({n}, at::TensorOptions().dtype(dtype).device(device_));
  }

  // Arguments are copied into the launch (and into a CUDA graph that captures it).
  template <class... Params, class... Args>
  void launch(void (*kernel)(Params...), int64_t blocks, const Args&... args) const {
    TORCH_INTERNAL_ASSERT(blocks >= 1 && blocks <= std::numeric_limits<int32_t>::max());
    kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream_>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

 private:
  c10::cuda::CUDAGuard guard_;
  c10::Device device_;
  at::cuda::CUDAStream stream_;
};

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, CUDA, m) {
  EntryPoints<DeviceKernels<CudaDevice>>::register_all(m);
  StepEntryPoints<DeviceStepKernels<CudaDevice>>::register_all(m);
}
// Sparse inputs reach the entry points only to be refused by check_tensors with a clear message.
TORCH_LIBRARY_IMPL(l2fast, SparseCUDA, m) { EntryPoints<DeviceKernels<CudaDevice>>::register_all(m); }

}  // namespace l2fast::cuda
