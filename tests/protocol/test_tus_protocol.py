"""tus 1.0.0, one test per MUST (and per CONTRACT.md line), in-process on a real FileStore.

Tables read as: request in -> status and headers out.
"""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path
from typing import Any

import pytest
from tornado.web import Application

from formforge.core.errors import UploadError
from tests.tus_helpers import (
    OFFSET_TYPE,
    Tus,
    b64,
    digest,
    eventually,
    make_app,
    path_of,
    tus_client,
)

ALL_EXTENSIONS = {
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
}


@pytest.fixture
def formforge(tmp_path: Path, io_loop: Any) -> Any:
    app = make_app(tmp_path / "data", limits={"max_size": 1_000_000})
    yield app
    # Background processing (sha256) may still run: end it while the loop is alive.
    io_loop.run_sync(app.service.processor.stop)


@pytest.fixture
def app(formforge: Any) -> Application:
    return formforge.application  # type: ignore[no-any-return]


@pytest.fixture
def tus(http_client: Any, base_url: str) -> Tus:
    return tus_client(http_client, base_url)


async def create(tus: Tus, length: int = 10, **headers: str) -> str:
    response = await tus("POST", "/files/", {"Upload-Length": str(length), **headers})
    assert response.code == 201, response.body
    return path_of(response)


async def patch(tus: Tus, path: str, offset: int, body: bytes, **headers: str) -> Any:
    return await tus("PATCH", path, {"Upload-Offset": str(offset), **OFFSET_TYPE, **headers}, body)


# -- core protocol -----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_options_advertises_version_extensions_max_size_and_checksums(tus: Tus) -> None:
    response = await tus("OPTIONS", "/files/", tus=False)
    assert response.code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == ALL_EXTENSIONS
    assert response.headers["Tus-Max-Size"] == "1000000"
    assert set(response.headers["Tus-Checksum-Algorithm"].split(",")) == {
        "sha1",
        "md5",
        "sha256",
        "crc32",
    }


@pytest.mark.gen_test
@pytest.mark.parametrize("method", ["POST", "HEAD", "PATCH", "DELETE"])
@pytest.mark.parametrize("version", [None, "0.2.2", "2.0.0", ""])
async def test_requests_without_supported_tus_resumable_get_412(
    tus: Tus, method: str, version: str | None
) -> None:
    path = await create(tus) if method != "POST" else "/files/"
    headers = {"Upload-Length": "10", "Upload-Offset": "0", **OFFSET_TYPE}
    if version is not None:
        headers["Tus-Resumable"] = version
    response = await tus(method, path, headers, b"x" if method == "PATCH" else None, tus=False)
    assert response.code == 412
    assert response.headers["Tus-Version"] == "1.0.0"


@pytest.mark.gen_test
async def test_every_answer_carries_tus_resumable(tus: Tus) -> None:
    path = await create(tus)
    for response in [
        await tus("HEAD", path),
        await patch(tus, path, 0, b"abc"),
        await patch(tus, path, 0, b"abc"),
        await tus("HEAD", "/files/nope" * 3),
    ]:
        assert response.headers["Tus-Resumable"] == "1.0.0"


@pytest.mark.gen_test
async def test_head_reports_offset_length_and_no_store(tus: Tus) -> None:
    path = await create(tus, 10, **{"Upload-Metadata": f"filename {b64('a b.txt')},empty"})
    await patch(tus, path, 0, b"12345")
    response = await tus("HEAD", path)
    assert response.code == 200
    assert response.headers["Upload-Offset"] == "5"
    assert response.headers["Upload-Length"] == "10"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Upload-Metadata"] == f"filename {b64('a b.txt')},empty"
    assert response.body == b""


@pytest.mark.gen_test
@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE", "GET"])
async def test_unknown_upload_is_404(tus: Tus, method: str) -> None:
    response = await tus(
        method,
        "/files/AAAAAAAAAAAAAAAAAAAAAA",
        {"Upload-Offset": "0", **OFFSET_TYPE},
        b"x" if method == "PATCH" else None,
    )
    assert response.code == 404


@pytest.mark.gen_test
async def test_patch_appends_and_answers_204_with_new_offset(tus: Tus) -> None:
    path = await create(tus, 10)
    first = await patch(tus, path, 0, b"01234")
    second = await patch(tus, path, 5, b"56789")
    assert (first.code, first.headers["Upload-Offset"]) == (204, "5")
    assert (second.code, second.headers["Upload-Offset"]) == (204, "10")
    download = await tus("GET", path)
    assert download.body == b"0123456789"


@pytest.mark.gen_test
@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
async def test_patch_with_other_content_type_is_415(tus: Tus, content_type: str | None) -> None:
    path = await create(tus)
    headers = {"Upload-Offset": "0"}
    if content_type:
        headers["Content-Type"] = content_type
    response = await tus("PATCH", path, headers, b"abc")
    assert response.code == 415
    assert (await tus("HEAD", path)).headers["Upload-Offset"] == "0"


@pytest.mark.gen_test
@pytest.mark.parametrize("offset", [0, 2, 4, 11])
async def test_patch_at_another_offset_is_409_and_stores_nothing(tus: Tus, offset: int) -> None:
    path = await create(tus)
    await patch(tus, path, 0, b"abc")
    response = await patch(tus, path, offset, b"zzz")
    assert response.code == 409
    assert response.headers["Upload-Offset"] == "3"
    assert (await tus("HEAD", path)).headers["Upload-Offset"] == "3"


@pytest.mark.gen_test
async def test_patch_past_upload_length_is_413_and_stores_nothing(tus: Tus) -> None:
    path = await create(tus, 4)
    assert (await patch(tus, path, 0, b"abcdef")).code == 413
    assert (await tus("HEAD", path)).headers["Upload-Offset"] == "0"


# -- creation, creation-with-upload, creation-defer-length ------------------------------


@pytest.mark.gen_test
async def test_creation_gives_201_and_an_unguessable_url_safe_location(
    tus: Tus, base_url: str
) -> None:
    first = await tus("POST", "/files/", {"Upload-Length": "5"})
    second = await tus("POST", "/files/", {"Upload-Length": "5"})
    assert first.code == second.code == 201
    ids = [r.headers["Location"].rsplit("/", 1)[1] for r in (first, second)]
    assert first.headers["Location"].startswith(base_url + "/files/")
    assert ids[0] != ids[1]
    assert all(len(i) >= 22 and i.replace("-", "").replace("_", "").isalnum() for i in ids)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 400),
        ({"Upload-Length": "5", "Upload-Defer-Length": "1"}, 400),
        ({"Upload-Defer-Length": "0"}, 400),
        ({"Upload-Length": "-1"}, 400),
        ({"Upload-Length": "1000001"}, 413),
        ({"Upload-Length": "1000000"}, 201),
        ({"Upload-Length": "0"}, 201),
        ({"Upload-Defer-Length": "1"}, 201),
    ],
)
async def test_creation_length_rules(tus: Tus, headers: dict[str, str], status: int) -> None:
    assert (await tus("POST", "/files/", headers)).code == status


@pytest.mark.gen_test
async def test_creation_with_upload_stores_the_body_and_reports_the_offset(tus: Tus) -> None:
    response = await tus("POST", "/files/", {"Upload-Length": "10", **OFFSET_TYPE}, b"hello")
    assert response.code == 201
    assert response.headers["Upload-Offset"] == "5"
    assert (await tus("HEAD", path_of(response))).headers["Upload-Offset"] == "5"


@pytest.mark.gen_test
async def test_deferred_length_is_declared_by_a_later_patch(tus: Tus) -> None:
    response = await tus("POST", "/files/", {"Upload-Defer-Length": "1"})
    path = path_of(response)
    head = await tus("HEAD", path)
    assert head.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head.headers
    assert (await patch(tus, path, 0, b"abc")).code == 204
    assert (await patch(tus, path, 3, b"de", **{"Upload-Length": "5"})).code == 204
    head = await tus("HEAD", path)
    assert (head.headers["Upload-Length"], head.headers["Upload-Offset"]) == ("5", "5")
    assert (await tus("GET", path)).body == b"abcde"


# -- expiration --------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_unfinished_uploads_carry_upload_expires(tus: Tus) -> None:
    created = await tus("POST", "/files/", {"Upload-Length": "4"})
    path = path_of(created)
    assert created.headers["Upload-Expires"].endswith(" GMT")
    assert "Upload-Expires" in (await patch(tus, path, 0, b"ab")).headers
    assert "Upload-Expires" not in (await patch(tus, path, 2, b"cd")).headers


@pytest.mark.gen_test
async def test_idle_unfinished_uploads_expire_with_410_and_lose_their_data(
    tmp_path: Path, http_client: Any, base_url: str
) -> None:
    # pytest-tornado serves the `app` fixture; this test needs its own short TTL, so it
    # builds a second app and drives the service directly for the HTTP-free sweep.
    short = make_app(tmp_path / "short", expiration={"unfinished_ttl_seconds": 0.2})
    service = short.service
    unfinished = await service.create(10, {})
    finished = await service.create(0, {})
    await asyncio.sleep(0.4)
    with pytest.raises(UploadError) as expired:
        await service.get(unfinished.id)
    assert (expired.value.kind.status, expired.value.kind.code) == (410, "expired")
    assert await service.sweep() == 1
    assert not (tmp_path / "short" / f"{unfinished.id}.bin").exists()
    assert (await service.get(finished.id)).is_complete  # finished uploads never expire
    await service.processor.stop()


# -- checksum ----------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "crc32"])
async def test_a_matching_checksum_is_accepted(tus: Tus, algorithm: str) -> None:
    path = await create(tus, 5)
    body = b"hello"
    value = (
        b64(zlib.crc32(body).to_bytes(4, "big"))
        if algorithm == "crc32"
        else digest(algorithm, body)
    )
    response = await patch(tus, path, 0, body, **{"Upload-Checksum": f"{algorithm} {value}"})
    assert response.code == 204


@pytest.mark.gen_test
async def test_a_checksum_mismatch_is_460_and_the_bytes_are_discarded(tus: Tus) -> None:
    path = await create(tus, 10)
    await patch(tus, path, 0, b"abc")
    response = await patch(
        tus, path, 3, b"def", **{"Upload-Checksum": f"sha1 {digest('sha1', b'other')}"}
    )
    assert response.code == 460
    assert (await tus("HEAD", path)).headers["Upload-Offset"] == "3"


@pytest.mark.gen_test
async def test_an_unsupported_checksum_algorithm_is_400(tus: Tus) -> None:
    path = await create(tus, 10)
    response = await patch(tus, path, 0, b"abc", **{"Upload-Checksum": "whirlpool AAAA"})
    assert response.code == 400


# -- termination -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_termination_removes_the_upload(tus: Tus, formforge: Any) -> None:
    path = await create(tus, 10)
    await patch(tus, path, 0, b"abc")
    assert (await tus("DELETE", path)).code == 204
    assert (await tus("HEAD", path)).code in (404, 410)
    assert (await patch(tus, path, 3, b"d")).code in (404, 410)
    data = Path(formforge.settings.storage.path) / (path.rsplit("/", 1)[1] + ".bin")
    assert not data.exists()


# -- concatenation -----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_concatenation_joins_partials_in_order(tus: Tus, base_url: str) -> None:
    parts = []
    for text in (b"hello ", b"tus ", b"world"):
        path = await create(tus, len(text), **{"Upload-Concat": "partial"})
        assert (await patch(tus, path, 0, text)).code == 204
        assert (await tus("HEAD", path)).headers["Upload-Concat"] == "partial"
        parts.append(path)
    final = await tus("POST", "/files/", {"Upload-Concat": "final;" + " ".join(parts)})
    assert final.code == 201
    head = await tus("HEAD", path_of(final))
    # tus: the parts' URLs in the order given (absolute, whatever form the client sent)
    assert head.headers["Upload-Concat"] == "final;" + " ".join(base_url + p for p in parts)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == "15"
    assert (await tus("GET", path_of(final))).body == b"hello tus world"


@pytest.mark.gen_test
async def test_a_patch_on_a_final_upload_is_403(tus: Tus) -> None:
    part = await create(tus, 2, **{"Upload-Concat": "partial"})
    await patch(tus, part, 0, b"ab")
    final = path_of(await tus("POST", "/files/", {"Upload-Concat": f"final;{part}"}))
    assert (await patch(tus, final, 2, b"c")).code == 403


@pytest.mark.gen_test
async def test_final_accepts_absolute_part_urls(tus: Tus, base_url: str) -> None:
    part = await create(tus, 2, **{"Upload-Concat": "partial"})
    await patch(tus, part, 0, b"ab")
    final = await tus("POST", "/files/", {"Upload-Concat": f"final;{base_url}{part}"})
    assert final.code == 201


@pytest.mark.gen_test
async def test_final_with_an_unfinished_partial_is_400(tus: Tus) -> None:
    part = await create(tus, 5, **{"Upload-Concat": "partial"})
    await patch(tus, part, 0, b"ab")
    assert (await tus("POST", "/files/", {"Upload-Concat": f"final;{part}"})).code == 400


# -- X-HTTP-Method-Override, CORS --------------------------------------------------------


@pytest.mark.gen_test
async def test_method_override_turns_a_post_into_patch_and_delete(tus: Tus) -> None:
    path = await create(tus, 3)
    response = await tus(
        "POST",
        path,
        {"X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0", **OFFSET_TYPE},
        b"abc",
    )
    assert (response.code, response.headers["Upload-Offset"]) == (204, "3")
    assert (await tus("POST", path, {"X-HTTP-Method-Override": "DELETE"})).code == 204


@pytest.mark.gen_test
async def test_cors_preflight_allows_tus_headers_and_methods(tus: Tus) -> None:
    response = await tus(
        "OPTIONS",
        "/files/",
        {
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "upload-offset,tus-resumable",
        },
        tus=False,
    )
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
    for name in ("Upload-Offset", "Tus-Resumable", "Upload-Metadata", "Upload-Checksum"):
        assert name in response.headers["Access-Control-Allow-Headers"]


@pytest.mark.gen_test
async def test_cors_exposes_the_tus_headers(tus: Tus) -> None:
    response = await tus("POST", "/files/", {"Upload-Length": "1", "Origin": "https://app.example"})
    exposed = response.headers["Access-Control-Expose-Headers"]
    for name in ("Location", "Upload-Offset", "Upload-Length", "Tus-Resumable", "Upload-Expires"):
        assert name in exposed


# -- download ----------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_get_of_an_unfinished_upload_is_409(tus: Tus) -> None:
    path = await create(tus, 10)
    await patch(tus, path, 0, b"abc")
    assert (await tus("GET", path, tus=False)).code == 409


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("range_header", "status", "body", "content_range"),
    [
        (None, 200, b"0123456789", None),
        ("bytes=0-3", 206, b"0123", "bytes 0-3/10"),
        ("bytes=7-", 206, b"789", "bytes 7-9/10"),
        ("bytes=-2", 206, b"89", "bytes 8-9/10"),
        ("bytes=5-100", 206, b"56789", "bytes 5-9/10"),
        ("bytes=10-", 416, b"", "bytes */10"),
        ("bytes=0-1,4-5", 200, b"0123456789", None),
    ],
)
async def test_download_with_range(
    tus: Tus, range_header: str | None, status: int, body: bytes, content_range: str | None
) -> None:
    path = await create(tus, 10)
    await patch(tus, path, 0, b"0123456789")
    headers = {"Range": range_header} if range_header else {}
    response = await tus("GET", path, headers, tus=False)
    assert response.code == status
    if status != 416:
        assert response.body == body
    assert response.headers.get("Content-Range") == content_range


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("filetype", "disposition"),
    [
        ("image/png", "inline"),
        ("text/html", "attachment"),
        ("image/svg+xml", "attachment"),
        ("application/javascript", "attachment"),
        (None, "attachment"),
    ],
)
async def test_download_is_inline_only_for_harmless_types(
    tus: Tus, filetype: str | None, disposition: str
) -> None:
    name = 'résumé "x".bin'
    metadata = f"filename {b64(name)}"
    if filetype:
        metadata += f",filetype {b64(filetype)}"
    path = await create(tus, 1, **{"Upload-Metadata": metadata})
    await patch(tus, path, 0, b"x")
    response = await tus("GET", path, tus=False)
    header = response.headers["Content-Disposition"]
    assert header.startswith(disposition + ";")
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22.bin" in header
    assert '"x"' not in header.split("filename*")[0].split("filename=", 1)[1][1:-3]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


# -- health and metrics ------------------------------------------------------------------


@pytest.mark.gen_test
async def test_healthz_and_metrics(tus: Tus) -> None:
    path = await create(tus, 3)
    await patch(tus, path, 0, b"abc")
    health = await tus("GET", "/healthz", tus=False)
    assert (health.code, health.body) == (200, b'{"status": "ok"}')

    async def metrics_text() -> str:
        return (await tus("GET", "/metrics", tus=False)).body.decode()

    async def finished() -> bool:
        return "formforge_uploads_finished_total 1.0" in await metrics_text()

    await eventually(finished)  # finished = processed, which runs after the last PATCH
    metrics = await metrics_text()
    assert "formforge_uploads_created_total 1.0" in metrics
    assert "formforge_bytes_received_total 3.0" in metrics
    assert 'formforge_http_requests_total{method="PATCH",status="204"} 1.0' in metrics
