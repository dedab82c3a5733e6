// Large CPU op outputs recycled between calls instead of being returned to the operating system.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace sparsevision {

// at::empty(sizes, options) for a CPU tensor. Buffers of at least kRecycledBytes come from, and go back to, a cache
// of idle buffers, so a training step does not page-fault its large activations in again on every call.
at::Tensor empty_recycled(at::IntArrayRef sizes, const at::TensorOptions& options);

// Caps the bytes of idle buffers kept (0 turns recycling off), freeing the oldest over it; returns the previous cap.
int64_t set_recycled_limit(int64_t bytes);

// Frees every idle buffer; returns the bytes freed.
int64_t release_recycled_buffers();

// Bytes held by idle buffers.
int64_t idle_recycled_bytes();

}  // namespace sparsevision
