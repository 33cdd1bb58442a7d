// GGUF Q4_0 and Q4_1 blocks straight into int4_matmul.cpp's layout (kernels.pack_int4 describes it), one
// pass over the file's bytes: loading an 8B Q4_0 file spent ~25 s unpacking every weight to a byte and
// re-packing it in PyTorch ops; this is a memory copy with the nibbles moved.
//   Q4_0 block (18 bytes): fp16 d, then 16 bytes, byte k holding q[k] (low nibble) and q[k + 16] (high);
//   Q4_1 block (20 bytes): fp16 d, fp16 m, then the same 16 bytes.
// The scales (d) and minimums (m) are copied as they are (fp16); a Q4_0 minimum, -8 d, is left to the caller.

#include <stdint.h>
#include <string.h>

#include "kernels.h"

namespace {

constexpr int64_t GROUP = 32, CHUNK_GROUPS = 16;

// q[0..31] of block `g` of a row, or zeros past the row's last block (the padding group).
inline void block_levels(const uint8_t* row, int64_t g, int64_t n_blocks, int32_t block_bytes, uint8_t* q) {
  if (g >= n_blocks) {
    memset(q, 0, GROUP);
    return;
  }
  const uint8_t* nibbles = row + g * block_bytes + (block_bytes - 16);
  for (int k = 0; k < 16; k++) {
    q[k] = nibbles[k] & 0x0F;
    q[k + 16] = nibbles[k] >> 4;
  }
}

}  // namespace

extern "C" void pack_q4_rows(const uint8_t* blocks, int64_t n_rows, int64_t in_features, int32_t block_bytes,
                             uint8_t* packed, uint16_t* scales, uint16_t* minimums, int32_t threads) {
  const int64_t n_blocks = in_features / GROUP, groups = n_blocks + n_blocks % 2, chunks = groups / CHUNK_GROUPS;
  const int64_t row_bytes = n_blocks * block_bytes, packed_bytes = groups * GROUP / 2;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t r = 0; r < n_rows; r++) {
    const uint8_t* row = blocks + r * row_bytes;
    uint8_t* out = packed + r * packed_bytes;
    for (int64_t g = 0; g < groups; g++) {  // fp16 d (and m) of each block; 0 for the padding group
      uint16_t d = 0, m = 0;
      if (g < n_blocks) {
        memcpy(&d, row + g * block_bytes, 2);
        if (block_bytes == 20) memcpy(&m, row + g * block_bytes + 2, 2);
      }
      scales[r * groups + g] = d;
      if (minimums) minimums[r * groups + g] = m;
    }
    uint8_t q[CHUNK_GROUPS][GROUP];
    for (int64_t c = 0; c < chunks; c++) {  // byte 64u + 4j + i: q[j][8u + i] | q[j][8u + 4 + i] << 4
      for (int j = 0; j < CHUNK_GROUPS; j++) block_levels(row, c * CHUNK_GROUPS + j, n_blocks, block_bytes, q[j]);
      uint8_t* chunk = out + c * CHUNK_GROUPS * GROUP / 2;
      for (int u = 0; u < 4; u++)
        for (int j = 0; j < CHUNK_GROUPS; j++)
          for (int i = 0; i < 4; i++) chunk[64 * u + 4 * j + i] = q[j][8 * u + i] | q[j][8 * u + 4 + i] << 4;
    }
    for (int64_t g = chunks * CHUNK_GROUPS; g < groups; g += 2) {  // pairs: byte i holds q[g][i] | q[g + 1][i] << 4
      block_levels(row, g, n_blocks, block_bytes, q[0]);
      block_levels(row, g + 1, n_blocks, block_bytes, q[1]);
      uint8_t* pair = out + g * GROUP / 2;
      for (int i = 0; i < GROUP; i++) pair[i] = q[0][i] | q[1][i] << 4;
    }
  }
}
