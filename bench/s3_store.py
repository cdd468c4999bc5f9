"""S3 store throughput: one big write in 1 MiB chunks, against SeaweedFS.

Starts its own `weed mini` (loopback, a temporary dir; tests/seaweed.py does it) unless
`--endpoint` names an S3 engine to use, then for each run: create an upload, write it with
`S3Store.write` from chunks made on the fly, read it back with `S3Store.read`. For the
engine's own ceiling it also times a bare aiobotocore multipart upload of the same size in
parts of the same size, one part at a time (as the store sends them). Prints the median
of each.

    python bench/s3_store.py [--size-mib 256] [--repeat 3] [--part-mib 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.seaweed

from formforge.core.ids import new_upload_id
from formforge.core.model import NewUpload
from formforge.stores.s3.store import S3Store
from tests.seaweed import Seaweed, create_bucket, running_seaweed

MIB = 1024 * 1024


async def chunks(size: int, block: bytes) -> AsyncIterator[bytes]:
    for index in range(size // MIB):
        yield index.to_bytes(8, "big") + block[8:]


async def store_run(store: S3Store, size: int, block: bytes) -> tuple[float, float]:
    upload_id = new_upload_id()
    await store.create(NewUpload(upload_id, size))
    start = time.perf_counter()
    assert await store.write(upload_id, 0, chunks(size, block)) == size
    written = time.perf_counter() - start
    start = time.perf_counter()
    read = sum([len(chunk) async for chunk in store.read(upload_id, 0, size)])
    assert read == size
    read_time = time.perf_counter() - start
    await store.forget(upload_id)
    return size / MIB / written, size / MIB / read_time


async def bare_run(store: S3Store, size: int, part: int) -> float:
    """The engine alone: CreateMultipartUpload, UploadPart one by one, Complete."""
    s3 = await store.s3()
    key = f"{store.prefix}bare-{new_upload_id()}"
    body = io.BytesIO(os.urandom(part))  # streamed, as the store's parts are
    start = time.perf_counter()
    started = await s3.create_multipart_upload(Bucket=store.bucket, Key=key)
    parts = []
    for number in range(1, size // part + 1):
        done = await s3.upload_part(
            Bucket=store.bucket,
            Key=key,
            UploadId=started["UploadId"],
            PartNumber=number,
            Body=body,
        )
        body.seek(0)
        parts.append({"PartNumber": number, "ETag": done["ETag"]})
    await s3.complete_multipart_upload(
        Bucket=store.bucket,
        Key=key,
        UploadId=started["UploadId"],
        MultipartUpload={"Parts": parts},
    )
    elapsed = time.perf_counter() - start
    await s3.delete_object(Bucket=store.bucket, Key=key)
    return size / MIB / elapsed


async def bench(seaweed: Seaweed, args: argparse.Namespace) -> None:
    size, part = args.size_mib * MIB, args.part_mib * MIB
    store = seaweed.store("bench/", part_size=part)
    block = os.urandom(MIB)
    writes, reads, bares = [], [], []
    try:
        for run in range(args.repeat):  # alternated, so both see the same machine noise
            write, read = await store_run(store, size, block)
            bare = await bare_run(store, size, part)
            print(f"run {run + 1}: store write {write:.1f} MiB/s, read {read:.1f} MiB/s; "
                  f"bare multipart upload {bare:.1f} MiB/s", flush=True)  # fmt: skip
            writes.append(write)
            reads.append(read)
            bares.append(bare)
    finally:
        await store.close()
    print(
        f"median of {args.repeat}, {args.size_mib} MiB in 1 MiB chunks, {args.part_mib} MiB "
        f"parts: store write {statistics.median(writes):.1f} MiB/s, store read "
        f"{statistics.median(reads):.1f} MiB/s, bare multipart upload "
        f"{statistics.median(bares):.1f} MiB/s"
    )


@contextlib.contextmanager
def engine(args: argparse.Namespace) -> Iterator[Seaweed]:
    if args.endpoint:
        seaweed = Seaweed(args.endpoint, args.bucket, args.access_key, args.secret_key)
        create_bucket(seaweed)
        yield seaweed
        return
    with (
        tempfile.TemporaryDirectory(prefix="ff-s3-bench-") as root,
        running_seaweed(Path(root)) as seaweed,
    ):
        yield seaweed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--endpoint", help="an S3 engine to use instead of starting SeaweedFS")
    parser.add_argument("--bucket", default="formforge-bench")
    parser.add_argument("--access-key")
    parser.add_argument("--secret-key")
    args = parser.parse_args()
    with engine(args) as seaweed:
        asyncio.run(bench(seaweed, args))


if __name__ == "__main__":
    main()
