// Host-side facts of the library: CUDA error strings and the code it was built with. No device
// code and no torch headers, so a test can compile this file alone for any target list and run it.
#include <cuda_runtime.h>

#include "contrastive_cuda.h"

namespace contrastive_cuda {

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

const char* built_archs() {
#if defined(CONTRASTIVE_BUILT_TARGETS)
  return CONTRASTIVE_BUILT_TARGETS;  // the build's -gencode targets (contrastive_ops/_build.py)
#else
  return "unknown";
#endif
}

}  // namespace contrastive_cuda
