// The emulator's main program (included after shim.h, the kernel sources and before the
// generated dispatch table; see test/cuda/emu/backend.ts). One run executes one launch:
//
//   runner REQUEST RESPONSE
//
// REQUEST (little-endian): "EQEMU001" | u32 name length | name | u32 grid[3] | u32 block[3] |
// u32 shared bytes | u32 slot count | u8 kind per slot (0 ptr, 1 i32, 2 u32, 3 i64, 4 u64,
// 5 f32, 6 f64) | u64 slots | u32 buffer count | per buffer: u64 device base, u64 bytes, bytes.
// RESPONSE: the bytes of every buffer after the launch, in request order.
//
// Each buffer is placed so that it ends at a PROT_NONE page: a kernel reading or writing past
// the end of a buffer crashes the runner instead of passing silently.
#include <sys/mman.h>
#include <unistd.h>

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

struct Buffer {
  uint64_t base = 0, bytes = 0;
  uint8_t* data = nullptr;
};

// bytes of memory ending exactly at an inaccessible page.
inline uint8_t* guarded_alloc(uint64_t bytes) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t span = (bytes + page - 1) / page * page;
  void* p = mmap(nullptr, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail("mmap failed");
  uint8_t* base = static_cast<uint8_t*>(p);
  if (mprotect(base + span, page, PROT_NONE) != 0) fail("mprotect failed");
  return base + span - bytes;
}

}  // namespace emu

int main(int argc, char** argv) {
  using namespace emu;
  if (argc != 3) fail("usage: runner REQUEST RESPONSE");
  Reader r;
  {
    FILE* f = fopen(argv[1], "rb");
    if (!f) fail("cannot open the request");
    uint8_t chunk[1 << 16];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) r.data.insert(r.data.end(), chunk, chunk + got);
    fclose(f);
  }
  r.need(8);
  if (memcmp(r.data.data(), "EQEMU001", 8) != 0) fail("bad request magic");
  r.at = 8;
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
  const uint32_t nslots = r.get<uint32_t>();
  std::vector<uint8_t> kinds(nslots);
  for (auto& k : kinds) k = r.get<uint8_t>();
  std::vector<uint64_t> slots(nslots);
  for (auto& s : slots) s = r.get<uint64_t>();
  const uint32_t nbuf = r.get<uint32_t>();
  std::vector<Buffer> bufs(nbuf);
  for (auto& b : bufs) {
    b.base = r.get<uint64_t>();
    b.bytes = r.get<uint64_t>();
    r.need(b.bytes);
    b.data = guarded_alloc(b.bytes);
    memcpy(b.data, r.data.data() + r.at, b.bytes);
    r.at += b.bytes;
  }
  for (uint32_t i = 0; i < nslots; ++i) {
    if (kinds[i] != 0 || slots[i] == 0) continue;
    bool found = false;
    for (const auto& b : bufs) {
      if (slots[i] >= b.base && slots[i] <= b.base + b.bytes) {
        slots[i] = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(b.data + (slots[i] - b.base)));
        found = true;
        break;
      }
    }
    if (!found) fail("a pointer argument is outside every buffer of the request");
  }
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
  FILE* out = fopen(argv[2], "wb");
  if (!out) fail("cannot write the response");
  for (const auto& b : bufs) {
    if (b.bytes && fwrite(b.data, 1, b.bytes, out) != b.bytes) fail("short write");
  }
  fclose(out);
  return 0;
}
