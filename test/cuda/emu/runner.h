// The emulator's main program (included after shim.h, the kernel sources and before the
// generated dispatch table; see test/cuda/emu/backend.ts). One runner process serves every
// launch of one EmulatorBackend:
//
//   runner REGION_BASE REGION_BYTES GUARD_BYTES PARENT_PID      (hex, hex, hex, decimal)
//
// File descriptors: 2 error text, 3 requests (a FIFO, read), 4 replies (a FIFO, written),
// 5 the device memory file (shared with Node, which uploads and downloads through it).
//
// Device memory: REGION_BYTES of address space at REGION_BASE are reserved PROT_NONE; a buffer
// at file offset OFF spanning BYTES (both multiples of the page size) is mapped from the file at
// REGION_BASE + OFF, shared, and the GUARD_BYTES after it stay PROT_NONE (memory.ts leaves them
// free in the file). Node places each buffer's data so that it ends exactly where its span ends:
// a kernel reading or writing past the end of a buffer faults, and the runner reports the fault
// and exits.
//
// Request (little-endian): u32 bytes that follow | u32 name length | name | u32 grid[3] |
// u32 block[3] | u32 shared bytes | u32 slot count | u64 slots (pointers already runner
// addresses) | u32 buffer count | per buffer: u64 file offset, u64 bytes. Reply: "ok\n" once
// the launch has run. Any failure (a fault, a divergent barrier, a deadlock, a bad request)
// writes its text to fd 2 and ends the process; Node sees the reply FIFO close, reads the
// text and starts a new runner for the next launch. End of the request FIFO ends the runner.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <map>
#include <string>

bool emu_dispatch(const std::string& name, const std::vector<uint64_t>& slots);

namespace emu {

inline void* as_ptr(uint64_t s) { return reinterpret_cast<void*>(static_cast<uintptr_t>(s)); }
inline int32_t as_i32(uint64_t s) { return static_cast<int32_t>(static_cast<uint32_t>(s)); }
inline uint32_t as_u32(uint64_t s) { return static_cast<uint32_t>(s); }
inline int64_t as_i64(uint64_t s) { return static_cast<int64_t>(s); }
inline uint64_t as_u64(uint64_t s) { return s; }
inline float as_f32(uint64_t s) {
  float f;
  const uint32_t lo = static_cast<uint32_t>(s);
  memcpy(&f, &lo, 4);
  return f;
}
inline double as_f64(uint64_t s) {
  double d;
  memcpy(&d, &s, 8);
  return d;
}

constexpr int kErrorFd = 2, kRequestFd = 3, kReplyFd = 4, kMemoryFd = 5;

struct Reader {
  std::vector<uint8_t> data;
  size_t at = 0;
  void need(size_t n) {
    if (at + n > data.size()) fail("truncated request");
  }
  template <class T>
  T get() {
    need(sizeof(T));
    T v;
    memcpy(&v, data.data() + at, sizeof(T));
    at += sizeof(T);
    return v;
  }
};

// Reads exactly n bytes; false at end of input before the first byte.
inline bool read_exact(int fd, void* dst, size_t n) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  size_t got = 0;
  while (got < n) {
    const ssize_t r = read(fd, p + got, n - got);
    if (r > 0) got += static_cast<size_t>(r);
    else if (r == 0 && got == 0) return false;
    else if (r < 0 && errno == EINTR) continue;
    else fail("request pipe closed mid-request");
  }
  return true;
}

// The device memory region: the reservation and the buffers mapped into it (offset -> bytes).
struct Region {
  uint64_t base = 0, bytes = 0, guard = 0, page = 0;
  std::map<uint64_t, uint64_t> mapped;

  void reserve() {
    void* p = mmap(reinterpret_cast<void*>(base), bytes, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != reinterpret_cast<void*>(base)) fail("cannot reserve the device address range (taken, or MAP_FIXED_NOREPLACE unsupported)");
  }

  // Returns [off, off + n) to the PROT_NONE reservation.
  void unmap(uint64_t off, uint64_t n) {
    void* p = mmap(reinterpret_cast<void*>(base + off), n, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) fail("cannot unmap a stale device buffer");
  }

  // Maps the buffer [off, off + n) of the memory file, first dropping every earlier mapping
  // that overlaps it or its guard (Node reuses freed file ranges).
  void ensure(uint64_t off, uint64_t n) {
    if (off % page || n % page || n == 0 || off + n + guard > bytes) fail("bad buffer range in the request");
    const auto same = mapped.find(off);
    if (same != mapped.end() && same->second == n) return;
    const uint64_t end = off + n + guard;
    auto it = mapped.lower_bound(off);
    if (it != mapped.begin() && std::prev(it)->first + std::prev(it)->second > off) --it;
    while (it != mapped.end() && it->first < end) {
      unmap(it->first, it->second);
      it = mapped.erase(it);
    }
    void* p = mmap(reinterpret_cast<void*>(base + off), n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, kMemoryFd, static_cast<off_t>(off));
    if (p == MAP_FAILED) fail("cannot map a device buffer from the memory file");
    mapped[off] = n;
  }
};

// A fault in a kernel (a guard page, a wild pointer) or an abort: say which and where, then end.
inline void on_fatal_signal(int sig, siginfo_t* info, void*) {
  char text[160];
  size_t n = 0;
  auto put = [&](const char* s) {
    while (*s && n < sizeof text - 1) text[n++] = *s++;
  };
  auto put_num = [&](uint64_t v, unsigned radix) {
    char digits[24];
    int k = 0;
    do digits[k++] = "0123456789abcdef"[v % radix], v /= radix;
    while (v);
    while (k && n < sizeof text - 1) text[n++] = digits[--k];
  };
  put("emulator: ");
  put(sig == SIGSEGV ? "SIGSEGV (invalid memory access" : sig == SIGBUS ? "SIGBUS (bus error" : sig == SIGFPE ? "SIGFPE (arithmetic fault"
      : sig == SIGILL ? "SIGILL (illegal instruction" : "SIGABRT (abort");
  if (sig != SIGABRT) {
    put(" at 0x");
    put_num(reinterpret_cast<uintptr_t>(info->si_addr), 16);
  }
  put(") (block ");
  put_num(g_blockIdx.x, 10);
  put(",");
  put_num(g_blockIdx.y, 10);
  put(",");
  put_num(g_blockIdx.z, 10);
  put(")\n");
  if (write(kErrorFd, text, n) < 0) {}
  _exit(128 + sig);
}

inline void install_fatal_handlers() {
  static char alt_stack[64 * 1024];
  stack_t ss{};
  ss.ss_sp = alt_stack;
  ss.ss_size = sizeof alt_stack;
  if (sigaltstack(&ss, nullptr) != 0) fail("sigaltstack failed");
  struct sigaction sa {};
  sa.sa_sigaction = on_fatal_signal;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) sigaction(sig, &sa, nullptr);
}

// fd 3 comes open for reading and writing (so that Node could open its end without blocking);
// reopen it read-only so that Node closing its end reads as end of input here.
inline void reopen_requests_read_only() {
  const int fd = open("/proc/self/fd/3", O_RDONLY);
  if (fd < 0 || dup2(fd, kRequestFd) != kRequestFd) fail("cannot reopen the request FIFO");
  close(fd);
}

}  // namespace emu

int main(int argc, char** argv) {
  using namespace emu;
  if (argc != 5) fail("usage: runner REGION_BASE REGION_BYTES GUARD_BYTES PARENT_PID");
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != static_cast<pid_t>(strtol(argv[4], nullptr, 10))) return 0;  // Node already gone
  install_fatal_handlers();
  reopen_requests_read_only();
  Region region;
  region.base = strtoull(argv[1], nullptr, 16);
  region.bytes = strtoull(argv[2], nullptr, 16);
  region.guard = strtoull(argv[3], nullptr, 16);
  region.page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (region.guard == 0 || region.guard % region.page) fail("the guard must be whole pages");
  region.reserve();
  for (;;) {
    uint32_t size;
    if (!read_exact(kRequestFd, &size, 4)) return 0;
    Reader r;
    r.data.resize(size);
    if (!read_exact(kRequestFd, r.data.data(), size)) fail("request pipe closed mid-request");
    const uint32_t name_len = r.get<uint32_t>();
    r.need(name_len);
    const std::string name(reinterpret_cast<const char*>(r.data.data() + r.at), name_len);
    r.at += name_len;
    dim3 grid, block;
    grid.x = r.get<uint32_t>();
    grid.y = r.get<uint32_t>();
    grid.z = r.get<uint32_t>();
    block.x = r.get<uint32_t>();
    block.y = r.get<uint32_t>();
    block.z = r.get<uint32_t>();
    const uint32_t shared = r.get<uint32_t>();
    if (shared != 0) fail("dynamic shared memory is not emulated");
    std::vector<uint64_t> slots(r.get<uint32_t>());
    for (auto& s : slots) s = r.get<uint64_t>();
    const uint32_t nbuf = r.get<uint32_t>();
    for (uint32_t i = 0; i < nbuf; ++i) {
      const uint64_t off = r.get<uint64_t>();
      region.ensure(off, r.get<uint64_t>());
    }
    if (r.at != r.data.size()) fail("trailing bytes in the request");
    g_gridDim = grid;
    g_blockDim = block;
    if (!emu_dispatch(name, slots)) fail("unknown kernel");
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          g_blockIdx.x = x;
          g_blockIdx.y = y;
          g_blockIdx.z = z;
          run_block();
        }
    if (write(kReplyFd, "ok\n", 3) != 3) fail("cannot write the reply");
  }
}
