#pragma once
// xentkit: cross-entropy losses with Caffe, PyTorch and TensorFlow semantics.

#include "xentkit/bfloat16.hpp"
#include "xentkit/cpu.hpp"
#include "xentkit/cuda.hpp"
#include "xentkit/device.hpp"
#include "xentkit/errors.hpp"
#include "xentkit/half.hpp"
#include "xentkit/linear.hpp"
#include "xentkit/losses.hpp"
#include "xentkit/options.hpp"
#include "xentkit/threading.hpp"
#include "xentkit/version.hpp"
