"""How fast each client uploads, and the chunk size that suits it.

Every streamed request body is `record`ed under its client's address; `chunk_size` turns
what was seen into advice: about `TARGET_SECONDS` of that client's rate per request. A rate
is an exponentially weighted moving average, so one odd request does not swing the advice
and a link that changes is followed within a few requests. At most `max_clients` addresses
are kept (the least recently heard from are forgotten first), so no crowd of clients can
grow the table without bound.

Pure: no I/O and no clock of its own; callers measure and pass durations in.
"""

from __future__ import annotations

from collections import OrderedDict

KiB = 1024
MiB = 1024 * KiB

# What a client nothing is known about gets: what the page and the CLI send by default.
DEFAULT_CHUNK_SIZE = 8 * MiB
# Clients send one chunk at a time and wait a round trip for each answer: below this the
# round trips, not the link, would set the pace.
MIN_CHUNK_SIZE = 256 * KiB
# Above this a request lasts long past the target on any link we can measure (loopback),
# and a chunk a buffering proxy or a client has to send again costs too much.
MAX_CHUNK_SIZE = 64 * MiB
# How long one chunk request should take: long enough that a round trip per chunk costs
# under 10% at 200 ms, short enough that a chunk cut off on a thin link loses little.
TARGET_SECONDS = 2.0
# Shorter bodies say more about socket buffers and latency than about the link.
MIN_SAMPLE_BYTES = 64 * KiB
MIN_SAMPLE_SECONDS = 0.05
# The weight of the newest sample: it halves the distance to a new rate per request.
SMOOTHING = 0.5
# Bounds the table to a few MiB, more addresses than one server sees uploading at once.
MAX_CLIENTS = 10_000


def chunk_size_for(bytes_per_second: float | None) -> int:
    """`TARGET_SECONDS` of a rate, rounded down to a power of two and kept within
    [`MIN_CHUNK_SIZE`, `MAX_CHUNK_SIZE`]; `DEFAULT_CHUNK_SIZE` when the rate is unknown."""
    if bytes_per_second is None:
        return DEFAULT_CHUNK_SIZE
    ideal = int(min(bytes_per_second * TARGET_SECONDS, MAX_CHUNK_SIZE))
    return max(MIN_CHUNK_SIZE, _power_of_two_at_most(ideal))


def _power_of_two_at_most(count: int) -> int:
    return 1 << (count.bit_length() - 1) if count > 0 else 0


def is_sample(count: int, seconds: float) -> bool:
    """Whether a body is long enough, in bytes and in time, to tell a rate."""
    return count >= MIN_SAMPLE_BYTES and seconds >= MIN_SAMPLE_SECONDS


class Throughput:
    """Upload rates per client address, most recently heard from last."""

    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self.max_clients = max_clients
        self._rates: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rates)

    def record(self, client: str, count: int, seconds: float) -> None:
        """`count` bytes arrived from `client` in `seconds` (first byte to last). A body too
        short to tell a rate (`is_sample`) changes nothing."""
        if not is_sample(count, seconds):
            return
        sample = count / seconds
        previous = self._rates.pop(client, None)
        rate = sample if previous is None else previous + SMOOTHING * (sample - previous)
        self._rates[client] = rate
        if len(self._rates) > self.max_clients:
            self._rates.popitem(last=False)

    def rate(self, client: str) -> float | None:
        """Bytes per second, smoothed; None for a client with no sample (or forgotten)."""
        return self._rates.get(client)

    def chunk_size(self, client: str) -> int:
        """The chunk size to advise `client` to send per request (see `chunk_size_for`)."""
        return chunk_size_for(self.rate(client))
