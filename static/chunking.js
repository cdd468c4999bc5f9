// The page's chunk size, adapted to the link: each chunk should take about TARGET_SECONDS,
// so a thin link sends small chunks (a cut one loses little) and a fast one big chunks (few
// round trips). The same bounds and target as the server's advice to REST clients
// (formforge/throughput.py). Pure: app.js measures, this decides.

const KiB = 1024;
const MiB = 1024 * KiB;

export const MIN_CHUNK_SIZE = 256 * KiB;
export const MAX_CHUNK_SIZE = 64 * MiB;
export const TARGET_SECONDS = 2;
// Shorter chunks say more about latency and buffers than about the link: they change nothing.
export const MIN_SAMPLE_BYTES = 64 * KiB;
export const MIN_SAMPLE_SECONDS = 0.05;

// The size of the next chunk, after the last one (`bytes` in `seconds`, request to answer)
// was sent at size `current`. It shrinks at once to what the link carries in TARGET_SECONDS,
// but at most doubles per chunk: one quick answer is not yet a fast link.
export function nextChunkSize(bytes, seconds, current) {
  if (!(bytes >= MIN_SAMPLE_BYTES && seconds >= MIN_SAMPLE_SECONDS)) return current;
  const ideal = Math.min((bytes / seconds) * TARGET_SECONDS, MAX_CHUNK_SIZE);
  let advised = MIN_CHUNK_SIZE; // then the largest power of two not above the ideal
  while (advised * 2 <= ideal) advised *= 2;
  return Math.max(MIN_CHUNK_SIZE, Math.min(advised, current * 2));
}
