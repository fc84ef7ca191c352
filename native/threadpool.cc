// A persistent thread pool for parallel_for: workers sleep on a condition variable and
// are woken once per parallel region. Kernels split work into one contiguous chunk per thread
// (2 cores here), so one region costs two wake-ups, not one per element.
#include "eqat.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

namespace eqat {
namespace {

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return nthreads_; }

  void resize(int n) {
    if (n < 1) n = 1;
    stop();
    nthreads_ = n;
    quit_ = false;
    uint64_t gen;
    {
      std::lock_guard<std::mutex> lk(mu_);
      gen = generation_;  // new workers must not pick up a finished job
    }
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, gen] { loop(i, gen); });
  }

  void run(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
    int64_t parts = nthreads_;
    if (grain < 1) grain = 1;
    if (parts > 1 && n / parts < grain) parts = std::max<int64_t>(1, n / grain);
    if (parts <= 1 || busy_.exchange(true)) {  // tiny or nested region: run inline
      if (n > 0) fn(0, n);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &fn;
      job_n_ = n;
      job_parts_ = parts;
      pending_ = static_cast<int>(parts - 1);
      ++generation_;
    }
    cv_.notify_all();
    // The caller runs chunk 0.
    chunk(0, n, parts, fn);
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    job_ = nullptr;
    busy_ = false;
  }

 private:
  static void chunk(int64_t idx, int64_t n, int64_t parts, const std::function<void(int64_t, int64_t)>& fn) {
    int64_t b = n * idx / parts, e = n * (idx + 1) / parts;
    if (b < e) fn(b, e);
  }

  void loop(int idx, uint64_t seen) {
    for (;;) {
      const std::function<void(int64_t, int64_t)>* job;
      int64_t n, parts;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return quit_ || generation_ != seen; });
        if (quit_) return;
        seen = generation_;
        job = job_;
        n = job_n_;
        parts = job_parts_;
      }
      if (idx < parts) chunk(idx, n, parts, *job);
      if (idx < parts) {
        std::lock_guard<std::mutex> lk(mu_);
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  int nthreads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0, job_parts_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool quit_ = false;
  std::atomic<bool> busy_{false};
};

int default_threads() {
  if (const char* env = std::getenv("EQAT_THREADS")) {
    int v = std::atoi(env);
    if (v > 0) return v;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? static_cast<int>(hc) : 1;
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  pool().run(n, fn, grain);
}

}  // namespace eqat
