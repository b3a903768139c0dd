"""Hostile and broken requests against a real service: each gets a clear 4xx, never a 5xx, and the service keeps serving.

(The property-based fuzz run over the whole OpenAPI document is tests/api/test_api_fuzz.py;
these are the hand-picked cases it is unlikely to generate.)
"""

from __future__ import annotations

import hmac
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from recon_service.api import auth
from recon_service.kit import CallbackRecorder, ReconDouble
from tests.helpers import TOKEN, delivered, wait_statuses, wait_until
from tests.reliability import hostile
from tests.reliability.conftest import SUCCESS, Observe, log_entries, new_job_id

Stack = tuple[ReconDouble, CallbackRecorder]


def photos(service: ReconDouble, name: str | None = None, count: int = 3) -> Path:
    return hostile.valid_photos(service.photos_root / (name or new_job_id()[:8]), count)


def body(service: ReconDouble, **fields: Any) -> dict[str, Any]:
    return {"job_id": new_job_id(), "dataset_name": "scan", "photo_count": 3, "photos_dir": str(photos(service)), **fields}


def post_raw(service: ReconDouble, content: bytes) -> httpx.Response:
    return service.http.post("/jobs", content=content, headers={"Content-Type": "application/json"})


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text[:500]
    error = response.json()
    assert set(error) == {"error"} and error["error"].strip(), error
    for fragment in fragments:
        assert fragment in error["error"], (fragment, error["error"][:500])
    return error["error"]


def assert_serving(service: ReconDouble) -> None:
    ready = httpx.get(service.url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text


MALFORMED: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "truncated": (b'{"job_id": "', ("not valid JSON",)),
    "invalid_utf8": (b'{"dataset_name": "\xff\xfe"}', ()),
    "lone_surrogate": (b'{"dataset_name": "\\ud800"}', ("dataset_name",)),
    "nested_100k_deep": (b"[" * 100_000 + b"]" * 100_000, ()),
    "utf8_bom": (b'\xef\xbb\xbf{"job_id": "x"}', ()),
    "trailing_garbage": (b'{"job_id": "x"} {"job_id": "y"}', ()),
    "nan_literal": (b'{"photo_count": NaN}', ("photo_count",)),
    "null": (b"null", ("JSON object",)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_json_gets_400_in_the_error_shape(case: str, hostile_stack: Stack) -> None:
    """Broken JSON bodies: truncated, invalid UTF-8, a lone surrogate, 100 000 levels of nesting, a BOM, two documents, NaN, null."""
    service, _ = hostile_stack
    content, fragments = MALFORMED[case]
    assert_error(post_raw(service, content), 400, *fragments)


WRONG_TYPES: dict[str, tuple[dict[str, Any], str]] = {
    "job_id_number": ({"job_id": 42}, "job_id"),
    "photos_dir_list": ({"photos_dir": ["/a", "/b"]}, "photos_dir"),
    "photo_count_bool": ({"photo_count": True}, "photo_count"),
    "photo_count_float": ({"photo_count": 3.0}, "photo_count"),
    "photo_count_2_to_70": ({"photo_count": 2**70}, "photo_count"),
    "dataset_name_null": ({"dataset_name": None}, "dataset_name"),
    "notes_object": ({"notes": {"a": 1}}, "notes"),
    "options_string": ({"options": "preview"}, "options"),
    "option_nan": ({"options": {"dense.min_ncc": float("nan")}}, "options.dense.min_ncc"),
    "option_infinity": ({"options": {"dense.min_ncc": float("inf")}}, "options.dense.min_ncc"),
    "option_huge_int": ({"options": {"mesh.max_faces": 2**70}}, "options.mesh.max_faces"),
    "option_nested": ({"options": {"ingest": {"max_photos": 3}}}, "options.ingest"),
}


@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_wrong_types_get_400_naming_the_field(case: str, hostile_stack: Stack) -> None:
    """Each field with a value of the wrong type or out of range (bool for int, 2**70, NaN and infinity options)."""
    service, _ = hostile_stack
    fields, name = WRONG_TYPES[case]
    payload = json.dumps(body(service, **fields)).encode()  # allow_nan: send NaN/Infinity literally
    assert_error(post_raw(service, payload), 400, name)


def test_unknown_fields_are_ignored_and_do_not_change_the_idempotency_key(hostile_stack: Stack, observe: Observe) -> None:
    """A body with extra top-level fields (``priority``, ``__proto__``, ``photos_root``) is accepted as if they were absent."""
    service, _ = hostile_stack
    payload = body(service)
    first = service.http.post("/jobs", json={**payload, "priority": 99, "__proto__": {"admin": True}, "photos_root": "/"})
    assert first.status_code == 202, first.text
    again = service.http.post("/jobs", json={**payload, "something_else": 1})
    assert (again.status_code, again.json()) == (202, first.json())
    job = service.job(payload["job_id"])
    assert not {"priority", "__proto__", "photos_root", "something_else"} & set(job)
    observe("resubmitted with other unknown fields", f"{again.status_code}, same answer, one job")


def test_a_10_mb_body_gets_413_declared_or_chunked_and_the_service_keeps_serving(hostile_stack: Stack, observe: Observe) -> None:
    """10 MB of JSON, once with Content-Length and once chunked (no length), then a normal request."""
    service, _ = hostile_stack
    big = json.dumps(body(service, notes="x" * (10 << 20))).encode()
    assert_error(post_raw(service, big), 413, "RECON_MAX_BODY_BYTES")

    def chunks():
        for i in range(0, len(big), 1 << 16):
            yield big[i : i + (1 << 16)]

    response = service.http.post("/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(response, 413)
    assert_serving(service)
    observe("declared and chunked", "413 both; /readyz 200 afterwards")


LONG: dict[str, tuple[dict[str, Any], str]] = {
    "dataset_name_100k": ({"dataset_name": "n" * 100_000}, "dataset_name"),
    "notes_20k": ({"notes": "n" * 20_000}, "notes"),
    "photos_dir_5000": ({"photos_dir": "/" + "d" * 5000}, "photos_dir"),
    "photos_dir_component_300": ({"photos_dir": "/" + "d" * 300}, "photos_dir"),
    "job_id_200k": ({"job_id": "j" * 200_000}, "job_id"),
}


@pytest.mark.parametrize("case", sorted(LONG))
def test_very_long_strings_get_400_with_a_short_message(case: str, hostile_stack: Stack) -> None:
    """Strings far beyond any sensible length: refused naming the field, and the answer never echoes them whole."""
    service, _ = hostile_stack
    fields, name = LONG[case]
    if case == "photos_dir_component_300":
        fields = {"photos_dir": str(service.photos_root / ("d" * 300))}  # inside the root: the OS refuses the name
    response = service.http.post("/jobs", json=body(service, **fields))
    assert_error(response, 400, name)
    assert len(response.content) < 2000, f"the error echoes {len(response.content)} bytes"


def test_unicode_names_are_stored_returned_and_reconstructed_intact(hostile_stack: Stack, observe: Observe) -> None:
    """Dataset name, notes, folder and file names in Cyrillic, CJK, Arabic, emoji and combining characters."""
    service, fake = hostile_stack
    name = "Стул 椅子 كرسي 🪑 e\u0301"
    folder = service.photos_root / "фото 写真 🪑"
    folder.mkdir()
    for i, photo in enumerate(sorted(photos(service, count=3).iterdir())):
        photo.rename(folder / f"照片_{i} é.jpg")
    payload = {"job_id": new_job_id(), "dataset_name": name, "photo_count": 3, "photos_dir": str(folder), "notes": "über 🙂",
               "simulate": {"stage_seconds": 0.01}}  # fmt: skip
    assert service.http.post("/jobs", json=payload).status_code == 202
    job = service.wait_job(payload["job_id"])
    assert (job["status"], job["dataset_name"]) == ("completed", name)
    listed = {j["job_id"]: j["dataset_name"] for j in service.http.get("/jobs", params={"limit": 100}).json()["jobs"]}
    assert listed[payload["job_id"]] == name
    assert wait_statuses(fake, payload["job_id"], "completed") == SUCCESS
    observe("job", f"completed; dataset_name returned byte-identical ({len(name.encode())} UTF-8 bytes)")


def test_cr_lf_in_fields_cannot_inject_headers_callbacks_or_log_lines(hostile_stack: Stack, observe: Observe) -> None:
    """CR/LF and fake JSON in dataset_name, notes, a photo's file name and a failure message that reaches the callbacks."""
    service, fake = hostile_stack
    injected = "scan\r\nX-Injected: yes\r\n\r\n"
    log_forgery = '\n{"level": "ERROR", "msg": "forged", "job_id": "00000000-0000-0000-0000-000000000000"}\n'
    folder = photos(service)
    (folder / "photo_1.jpg").rename(folder / "photo\r\nX-Injected: yes.jpg")
    payload = body(service, photos_dir=str(folder), dataset_name=injected, notes=log_forgery,
                   simulate={"stage_seconds": 0.01, "fail_at": "sparse", "message": "boom\r\nX-Injected: yes"})  # fmt: skip
    assert service.http.post("/jobs", json=payload).status_code == 202
    job = service.wait_job(payload["job_id"])
    assert job["status"] == "failed" and job["message"].startswith("sparse: boom\r\nX-Injected: yes")
    assert job["dataset_name"] == injected
    wait_statuses(fake, payload["job_id"], "failed")
    calls = fake.calls_for(payload["job_id"], delivered_only=False)
    assert calls and all(c.headers.get("authorization") == "Bearer test-callback-token" for c in calls)
    assert delivered(fake, payload["job_id"], "status")[-1]["message"] == job["message"]  # carried as JSON data, intact

    # Every stderr line is one JSON object; the forged one exists only inside a field, never as a line.
    lines = [line for line in service.log().splitlines() if line.strip()]
    banners = [line for line in lines if not line.startswith("{")]
    assert all(line.startswith("recon-service: ") for line in banners), banners
    entries = log_entries(service)
    assert not [e for e in entries if e.get("msg") == "forged"]
    assert not [e for e in entries if "X-Injected" in e and e.get("msg") != "forged"]

    # Headers: an encoded CR/LF in the path stays data; raw CR, LF and obsolete line folding are protocol errors.
    response = service.http.get("/jobs/%0d%0aSet-Cookie:%20admin=1")
    assert_error(response, 404)
    assert "set-cookie" not in response.headers
    answers = {}
    for case, raw in {
        "bare CR in a header": b"GET /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\rX-Evil: 1\r\n\r\n",
        "obsolete line folding": b"GET /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n " + TOKEN.encode() + b"\r\n\r\n",
        "CR/LF in the request line": b"GET /jobs\r\nSet-Cookie: a=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    }.items():
        with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        head, _, payload = answer.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode()
        answers[case] = status_line
        assert status_line.split()[1] in ("400", "401"), (case, status_line)
        assert b"content-type: application/json" in head.lower(), (case, head)
        assert set(json.loads(payload)) == {"error"}, (case, payload)  # never uvicorn's plain text
    assert_serving(service)
    observe("raw requests", answers)
    observe("log", f"{len(entries)} JSON lines, {len(banners)} start-up banner(s), no forged line")


BAD_TOKENS: dict[str, dict[str, bytes]] = {
    "no header": {},
    "empty bearer": {"Authorization": b"Bearer "},
    "only spaces": {"Authorization": b"Bearer      "},
    "100 kB token": {"Authorization": b"Bearer " + b"a" * 100_000},
    "non-ASCII bytes": {"Authorization": b"Bearer t\xc3\xb6k\xff"},
    "right token plus suffix": {"Authorization": b"Bearer " + TOKEN.encode() + b"x"},
    "right token prefix": {"Authorization": b"Bearer " + TOKEN.encode()[:-1]},
    "right token upper-cased": {"Authorization": b"Bearer " + TOKEN.upper().encode()},
    "right token as Basic": {"Authorization": b"Basic " + TOKEN.encode()},
    "right token, two words": {"Authorization": b"Bearer " + TOKEN.encode() + b" " + TOKEN.encode()},
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_wrong_empty_and_very_long_bearer_tokens_get_401(case: str, hostile_stack: Stack) -> None:
    """Missing, empty, 100 kB, non-ASCII, almost-right and wrong-scheme tokens on a protected endpoint."""
    service, _ = hostile_stack
    status, headers, payload = raw_request(service, b"GET /jobs HTTP/1.1", BAD_TOKENS[case])
    assert status == 401, payload
    assert set(json.loads(payload)) == {"error"} and b"RECON_SERVICE_TOKEN" in payload
    assert headers.get("www-authenticate") == "Bearer"


def raw_request(service: ReconDouble, request_line: bytes, headers: dict[str, bytes]) -> tuple[int, dict[str, str], bytes]:
    """Send exactly these bytes (httpx refuses to send some of them) and read one answer."""
    head = request_line + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers.items())
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header_block, _, payload = data.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode("latin-1").split("\r\n")
    parsed = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), parsed, payload


def test_tokens_are_compared_in_constant_time_whatever_their_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every presented token, right or wrong, of any length, goes through hmac.compare_digest (no == shortcut)."""
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    app = Starlette(routes=[Route("/jobs", lambda request: PlainTextResponse("ok"))])
    client = TestClient(auth.BearerAuthMiddleware(app, token="s3cret-token"))
    tokens = ["s3cret-token", "s3cret-tokeX", "s", "x" * 1000]
    answers = [client.get("/jobs", headers={"Authorization": f"Bearer {t}"}).status_code for t in tokens]
    assert answers == [200, 401, 401, 401]
    assert compared == [(t.encode(), b"s3cret-token") for t in tokens]


def test_photo_and_pixel_limits_are_service_settings_and_name_what_to_change(hostile_stack: Stack, observe: Observe) -> None:
    """RECON_MAX_PHOTOS=5 and RECON_MAX_PIXELS=2000000: 6 photos, and options asking for more, are refused; defaults are capped."""
    service, _ = hostile_stack
    six = photos(service, count=6)
    too_many = assert_error(service.http.post("/jobs", json=body(service, photos_dir=str(six), photo_count=6)), 400, "RECON_MAX_PHOTOS", "found 6")
    more_photos = assert_error(service.http.post("/jobs", json=body(service, options={"ingest.max_photos": 10})), 400,
                               "options.ingest.max_photos", "RECON_MAX_PHOTOS")  # fmt: skip
    more_pixels = assert_error(service.http.post("/jobs", json=body(service, options={"ingest.max_pixels": 5_000_000})), 400,
                               "options.ingest.max_pixels", "RECON_MAX_PIXELS")  # fmt: skip
    payload = body(service, options={"preset": "high", "ingest.max_pixels": 1_500_000}, simulate={"stage_seconds": 0.01})
    assert service.http.post("/jobs", json=payload).status_code == 202
    options = service.job(payload["job_id"])["options"]
    assert (options["ingest.max_photos"], options["ingest.max_pixels"]) == (5, 1_500_000)
    service.wait_job(payload["job_id"])
    observe("errors", [too_many, more_photos, more_pixels])


def test_the_service_answers_normally_after_every_hostile_request(hostile_stack: Stack) -> None:
    """After all of the above (this module runs it last): a normal job completes with every callback."""
    service, fake = hostile_stack
    payload = body(service, simulate={"stage_seconds": 0.01})
    assert service.http.post("/jobs", json=payload).status_code == 202
    assert service.wait_job(payload["job_id"])["status"] == "completed"
    assert wait_statuses(fake, payload["job_id"], "completed") == SUCCESS
    errors = [e for e in log_entries(service) if e["level"] == "ERROR"]
    assert not errors, f"the service logged errors: {errors[:3]}"
    wait_until(lambda: service.http.get("/readyz").json()["pending_callbacks"] == 0, 10, "the outbox to drain")
