"""How much of a connection Tornado reads at a time, and ahead of what a handler asked for.

While a handler is busy (a PATCH waits for its upload's lock, a body waits for the store to
take its last chunk, an answer is being written), Tornado keeps listening on the socket to
notice a close, and reads what arrives into its buffer. Two things made that costly:

- The read goes on until the buffer holds the byte bound of the last read Tornado was asked
  for; after a request's headers that is `max_header_size`, which Tornado never clears, and
  FormForge's is 2 MiB (`fronts/oversized.py`). So a busy connection read up to 2 MiB of its
  body ahead. `between_bodies` clears it as soon as the headers are in.
- Each read is `read_chunk_size` bytes, 1 MiB for bodies (`app.CHUNK_SIZE`: fewer, larger
  pieces cost less CPU per byte). Between bodies (reading headers, waiting for a lock,
  answering) the connection reads `BETWEEN_BODIES_READ_SIZE` at a time instead: enough for
  the headers and a small PATCH's whole body in one read.

200 concurrent 4 MiB uploads kept 155 MiB in these buffers (three quarters of the live
heap) before; docs/benchmarks.md has the figures after.
"""

from __future__ import annotations

from tornado.iostream import IOStream

BETWEEN_BODIES_READ_SIZE = 128 * 1024

# Tornado 6's name for the bound (`BaseIOStream.read_until_regex(max_bytes=...)`);
# tests/unit/test_read_ahead.py shows what it does and fails if that changes.
_BOUND_ATTRIBUTE = "_read_max_bytes"


def between_bodies(stream: IOStream) -> None:
    """The headers are in, or a body is over: read ahead little until the next body."""
    if not stream.reading() and getattr(stream, _BOUND_ATTRIBUTE, None) is not None:
        setattr(stream, _BOUND_ATTRIBUTE, None)
    stream.read_chunk_size = BETWEEN_BODIES_READ_SIZE


def for_body(stream: IOStream, read_size: int) -> None:
    """A body streams now: read it `read_size` bytes at a time (a slow body's low-water mark
    sets this after each piece, `fronts/lowwater.py`)."""
    stream.read_chunk_size = read_size
