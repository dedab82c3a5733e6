// Recycled CPU output buffers (see recycled_buffers.h).
//
// glibc serves every allocation over 32 MiB with a fresh mmap and unmaps it on free, so each large activation of a
// training step (115k sites x 96 float32 channels is 44 MB) is page-faulted in, 4 KiB at a time, on every call:
// about 20 ms per such tensor, a tenth of a 96-channel convolution's time. Buffers of at least kRecycledBytes are
// therefore kept when their tensor dies and handed to the next request they fit (the smallest idle buffer of at
// least the size asked for and at most a quarter more). Idle buffers are capped (set_recycled_limit; Python sets
// it from SPARSEVISION_BUFFER_CACHE_MB); a buffer given back over the cap makes room by freeing the buffers idle the
// longest, so the cache follows the current workload (a float64 run, or a larger scene, does not leave it full of
// sizes nobody asks for any more). A recycled buffer's contents are unspecified, as with at::empty; every op that
// uses one writes all of it.
#include "recycled_buffers.h"

#include <c10/core/CPUAllocator.h>

#include <list>
#include <mutex>
#include <vector>

namespace sparsevision {
namespace {

constexpr int64_t kRecycledBytes = int64_t(8) << 20;

struct Buffer {
  c10::DataPtr memory;
  int64_t bytes;
};

class BufferCache {
 public:
  bool enabled() {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_bytes_ > 0;
  }

  Buffer* take(int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto fit = idle_.end();
      for (auto it = idle_.begin(); it != idle_.end(); ++it) {   // at most limit / kRecycledBytes entries
        if ((*it)->bytes >= bytes && (*it)->bytes <= bytes + bytes / 4 &&
            (fit == idle_.end() || (*it)->bytes < (*fit)->bytes)) {
          fit = it;
        }
      }
      if (fit != idle_.end()) {
        Buffer* buffer = *fit;
        idle_.erase(fit);
        idle_bytes_ -= buffer->bytes;
        return buffer;
      }
    }
    return new Buffer{c10::GetCPUAllocator()->allocate(bytes), bytes};
  }

  void give_back(Buffer* buffer) {
    std::vector<Buffer*> freed{buffer};
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (buffer->bytes <= limit_bytes_) {
        freed = evict(limit_bytes_ - buffer->bytes);
        idle_.push_back(buffer);
        idle_bytes_ += buffer->bytes;
      }
    }
    for (Buffer* old : freed) delete old;
  }

  // Frees the buffers idle the longest until at most `keep` bytes stay idle; returns the bytes freed.
  int64_t shrink_to(int64_t keep) {
    std::vector<Buffer*> freed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      freed = evict(keep);
    }
    int64_t bytes = 0;
    for (Buffer* old : freed) {
      bytes += old->bytes;
      delete old;
    }
    return bytes;
  }

  int64_t set_limit(int64_t bytes) {
    int64_t previous;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      previous = limit_bytes_;
      limit_bytes_ = bytes;
    }
    shrink_to(bytes);
    return previous;
  }

  int64_t idle_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return idle_bytes_;
  }

 private:
  // Unlinks the oldest idle buffers until at most `keep` bytes stay; the caller frees them outside the lock.
  std::vector<Buffer*> evict(int64_t keep) {
    std::vector<Buffer*> evicted;
    while (idle_bytes_ > keep) {
      evicted.push_back(idle_.front());
      idle_bytes_ -= idle_.front()->bytes;
      idle_.pop_front();
    }
    return evicted;
  }

  std::mutex mutex_;
  std::list<Buffer*> idle_;   // oldest first
  int64_t idle_bytes_ = 0, limit_bytes_ = 0;   // off until sparsevision.ops sets the cap at import
};

// Never destroyed: tensors may still give buffers back while the process exits.
BufferCache& cache() {
  static BufferCache* instance = new BufferCache();
  return *instance;
}

void give_back(void* buffer) { cache().give_back(static_cast<Buffer*>(buffer)); }

}  // namespace

at::Tensor empty_recycled(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const int64_t bytes = c10::multiply_integers(sizes) * int64_t(options.dtype().itemsize());
  if (options.device().type() != c10::DeviceType::CPU || bytes < kRecycledBytes || !cache().enabled()) {
    return at::empty(sizes, options);
  }
  Buffer* buffer = cache().take(bytes);
  // A resizable storage like at::empty's: growing it moves the data to a new CPU allocation and gives this back.
  c10::DataPtr memory(buffer->memory.get(), buffer, &give_back, c10::Device(c10::DeviceType::CPU));
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes, std::move(memory), c10::GetCPUAllocator(),
                       /*resizable=*/true);
  auto tensor = at::detail::make_tensor<c10::TensorImpl>(std::move(storage), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                                         options.dtype());
  tensor.unsafeGetTensorImpl()->set_sizes_contiguous(sizes);
  return tensor;
}

int64_t set_recycled_limit(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0, "the recycled-buffer limit must be >= 0 bytes, got ", bytes);
  return cache().set_limit(bytes);
}

int64_t release_recycled_buffers() { return cache().shrink_to(0); }

int64_t idle_recycled_bytes() { return cache().idle_bytes(); }

}  // namespace sparsevision
