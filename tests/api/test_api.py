"""The HTTP contract against a real server process: auth, every 400 case, errors, idempotency, listing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.options import PRESETS, option_keys
from recon_service.kit import ReconDouble, write_jpegs
from tests.helpers import TOKEN


def photos(service: ReconDouble, count: int = 3) -> Path:
    return write_jpegs(service.photos_root / uuid.uuid4().hex[:8], count)


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """The answer has ``status`` and the ``{"error": ...}`` shape, mentioning every fragment."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} or (status == 503 and "error" in body), body
    for fragment in fragments:
        assert fragment in body["error"], (fragment, body["error"])
    return body["error"]


# -- authentication --------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}])
def test_requests_without_the_right_bearer_token_get_401(shared: ReconDouble, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/jobs"), ("GET", f"/jobs/{uuid.uuid4()}"), ("POST", "/jobs"), ("GET", "/options"), ("GET", "/nowhere")):
        response = httpx.request(method, shared.url + path, headers=headers, json={})
        assert_error(response, 401, "RECON_SERVICE_TOKEN")
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_authentication_is_checked_before_the_body_is_parsed(shared: ReconDouble) -> None:
    response = httpx.post(shared.url + "/jobs", content=b'{"job_id": ', headers={"Content-Type": "application/json"})
    assert_error(response, 401)


def test_the_right_token_is_accepted(shared: ReconDouble) -> None:
    assert shared.http.get("/jobs").status_code == 200


def test_health_checks_need_no_token_and_say_the_pipeline_is_simulated(shared: ReconDouble) -> None:
    health = httpx.get(shared.url + "/healthz")
    assert health.status_code == 200 and health.json()["simulated"] is True and health.json()["pipeline"] == "simulate"
    ready = httpx.get(shared.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True and ready.json()["simulated"] is True


# -- POST /jobs validation -------------------------------------------------------------------------
Mutation = Callable[[dict[str, Any], ReconDouble, Path], None]


def _outside_root(body: dict[str, Any], service: ReconDouble, tmp: Path) -> None:
    body["photos_dir"] = str(write_jpegs(tmp / "elsewhere", 3))


def _symlink_escape(body: dict[str, Any], service: ReconDouble, tmp: Path) -> None:
    link = service.photos_root / f"link-{uuid.uuid4().hex[:6]}"
    link.symlink_to(write_jpegs(tmp / "elsewhere", 3), target_is_directory=True)
    body["photos_dir"] = str(link)


def _photo_symlink_escape(body: dict[str, Any], service: ReconDouble, tmp: Path) -> None:
    folder = Path(body["photos_dir"])
    outside = write_jpegs(tmp / "secret", 1) / "photo_1.jpg"
    (folder / "photo_4.jpg").symlink_to(outside)
    body["photo_count"] = 4


def _file_not_dir(body: dict[str, Any], service: ReconDouble, tmp: Path) -> None:
    body["photos_dir"] = str(Path(body["photos_dir"]) / "photo_1.jpg")


def _too_few(body: dict[str, Any], service: ReconDouble, tmp: Path) -> None:
    (Path(body["photos_dir"]) / "photo_3.jpg").unlink()
    body["photo_count"] = 2


def _set(**fields: Any) -> Mutation:
    def mutate(body: dict[str, Any], service: ReconDouble, tmp: Path) -> None:
        body.update(fields)

    return mutate


def _drop(field: str) -> Mutation:
    def mutate(body: dict[str, Any], service: ReconDouble, tmp: Path) -> None:
        del body[field]

    return mutate


def _missing_dir(body: dict[str, Any], service: ReconDouble, tmp: Path) -> None:
    body["photos_dir"] = str(service.photos_root / "never-uploaded")


BAD_SUBMISSIONS: dict[str, tuple[Mutation, tuple[str, ...]]] = {
    "job_id_not_uuid": (_set(job_id="job-42"), ("job_id", "UUID", "job-42")),
    "job_id_missing": (_drop("job_id"), ("job_id", "required")),
    "dataset_name_missing": (_drop("dataset_name"), ("dataset_name", "required")),
    "dataset_name_empty": (_set(dataset_name="   "), ("dataset_name", "empty")),
    "photo_count_zero": (_set(photo_count=0), ("photo_count", "at least 1")),
    "photo_count_wrong_type": (_set(photo_count="three"), ("photo_count", "integer")),
    "photo_count_as_string_number": (_set(photo_count="3"), ("photo_count", "integer")),
    "photos_dir_relative": (_set(photos_dir="uploads/job"), ("photos_dir", "absolute")),
    "photos_dir_missing": (_missing_dir, ("photos_dir", "does not exist")),
    "photos_dir_is_a_file": (_file_not_dir, ("photos_dir", "not a directory")),
    "photos_dir_outside_root": (_outside_root, ("photos_dir", "outside the allowed photos root", "RECON_PHOTOS_ROOT")),
    "photos_dir_symlink_escapes_root": (_symlink_escape, ("photos_dir", "outside the allowed photos root")),
    "photo_symlink_escapes_root": (_photo_symlink_escape, ("photos_dir", "photo_4.jpg", "symbolic link (links are not followed)")),
    "too_few_photos": (_too_few, ("photos_dir", "found 2 photos", "at least 3")),
    "photo_count_differs": (_set(photo_count=5), ("photo_count", "5", "holds 3")),
    "notes_wrong_type": (_set(notes=42), ("notes",)),
    "unknown_option": (_set(options={"dense.sharpness": 3}), ("options.dense.sharpness", "unknown option")),
    "option_out_of_range": (_set(options={"mesh.poisson_depth": 99}), ("options.mesh.poisson_depth", "at most 12")),
    "unknown_preset": (_set(options={"preset": "ultra"}), ("options.preset", "preview, balanced, high")),
    "options_not_an_object": (_set(options=[1, 2]), ("options",)),
    "cuda_backend_without_cuda": (_set(options={"dense.backend": "cuda"}), ("options.dense.backend", "'cuda'", "GET /options")),
    "more_confirmations_than_sources": (_set(options={"dense.num_source_views": 2, "dense.min_consistent_views": 3}),
                                        ("options.dense.min_consistent_views", "dense.num_source_views")),
    "dense_larger_than_working_images": (_set(options={"ingest.max_image_size": 640}), ("options.dense.max_image_size", "ingest.max_image_size")),
    "simulate_unknown_stage": (_set(simulate={"fail_at": "meshing"}), ("simulate.fail_at", "ingest")),
    "simulate_unknown_key": (_set(simulate={"explode": True}), ("simulate.explode",)),
    "simulate_bad_delay": (_set(simulate={"callback_delay_s": -1}), ("simulate.callback_delay_s",)),
    "real_size_negative": (_set(real_size_m=-0.3), ("real_size_m", "above 0")),
    "real_size_not_a_number": (_set(real_size_m="30 cm"), ("real_size_m",)),
    "real_size_disagrees_with_option": (_set(real_size_m=0.3, options={"export.real_size_m": 2.0}), ("real_size_m", "export.real_size_m")),
}


@pytest.mark.parametrize("case", sorted(BAD_SUBMISSIONS))
def test_invalid_submissions_get_400_naming_the_field(case: str, shared: ReconDouble, tmp_path: Path) -> None:
    mutate, fragments = BAD_SUBMISSIONS[case]
    body = shared.payload(photos(shared))
    mutate(body, shared, tmp_path)
    response = shared.http.post("/jobs", json=body)
    assert_error(response, 400, *fragments)
    if isinstance(body.get("job_id"), str) and body["job_id"].count("-") == 4:
        assert shared.http.get(f"/jobs/{body['job_id']}").status_code == 404  # nothing was stored


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b'{"job_id": "x", ', "not valid JSON"), (b"[1, 2, 3]", "JSON object"), (b"", "required"), (b'"text"', "JSON object")],
)
def test_malformed_bodies_get_400_in_the_error_shape(shared: ReconDouble, content: bytes, fragment: str) -> None:
    response = shared.http.post("/jobs", content=content, headers={"Content-Type": "application/json"})
    assert_error(response, 400, fragment)


def test_a_form_encoded_body_is_told_to_send_json(shared: ReconDouble) -> None:
    response = shared.http.post("/jobs", content=b"job_id=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(response, 400, "application/json")


def test_oversize_bodies_get_413_declared_or_streamed(shared: ReconDouble) -> None:
    big = b'{"notes": "' + b"x" * (2 << 20) + b'"}'
    assert_error(shared.http.post("/jobs", content=big, headers={"Content-Type": "application/json"}), 413, "RECON_MAX_BODY_BYTES")

    def chunks():  # no Content-Length: chunked transfer encoding
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    assert_error(shared.http.post("/jobs", content=chunks(), headers={"Content-Type": "application/json"}), 413)


def test_unknown_jobs_paths_and_methods_get_404_and_405(shared: ReconDouble) -> None:
    assert_error(shared.http.get(f"/jobs/{uuid.uuid4()}"), 404, "no job")
    assert_error(shared.http.get("/jobs/not-a-uuid"), 404, "no job")
    assert_error(shared.http.post(f"/jobs/{uuid.uuid4()}/cancel"), 404, "no job")
    assert_error(shared.http.get("/models"), 404, "no such endpoint")
    assert_error(shared.http.delete("/jobs"), 405, "DELETE")


# -- idempotency, options, listing ------------------------------------------------------------------
def test_resubmitting_the_same_payload_returns_the_same_answer_and_starts_nothing(shared: ReconDouble) -> None:
    body = shared.payload(photos(shared), options={"preset": "preview"})
    first = shared.http.post("/jobs", json=body)
    assert first.status_code == 202
    assert first.json() == {"accepted": True, "external_job_id": body["job_id"], "message": "queued"}
    shared.wait_job(body["job_id"])
    again = shared.http.post("/jobs", json=body)
    assert (again.status_code, again.json()) == (202, first.json())
    job = shared.job(body["job_id"])
    assert job["status"] == "completed" and job["attempts"] == 1  # not run a second time


def test_a_different_payload_under_a_known_job_id_is_409(shared: ReconDouble) -> None:
    body = shared.payload(photos(shared))
    assert shared.http.post("/jobs", json=body).status_code == 202
    changed = {**body, "dataset_name": "another scan"}
    assert_error(shared.http.post("/jobs", json=changed), 409, body["job_id"], "dataset_name")


def test_options_are_resolved_from_preset_and_overrides(shared: ReconDouble) -> None:
    job_id = shared.submit(photos(shared), options={"preset": "preview", "dense.max_image_size": 640})
    options = shared.job(job_id)["options"]
    assert options["preset"] == "preview" and options["dense.max_image_size"] == 640
    assert options["mesh.poisson_depth"] == PRESETS["preview"]["mesh.poisson_depth"] != PRESETS["high"]["mesh.poisson_depth"]
    assert set(options) == {"preset", *option_keys()}


def test_real_size_m_sets_the_export_scale_option(shared: ReconDouble) -> None:
    body = shared.payload(photos(shared)) | {"real_size_m": 0.3}
    response = shared.http.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    assert shared.job(body["job_id"])["options"]["export.real_size_m"] == 0.3


def test_get_options_lists_presets_and_every_option_with_type_default_and_help(shared: ReconDouble) -> None:
    schema = shared.http.get("/options").json()
    assert set(schema["presets"]) == {"preview", "balanced", "high"}
    assert [o["name"] for o in schema["options"]] == option_keys()
    for option in schema["options"]:
        assert option["type"] in ("integer", "number", "boolean", "string") and option["help"] and "default" in option
    backend = next(o for o in schema["options"] if o["name"] == "dense.backend")
    assert backend["choices"] == ["auto", "cpu"]  # no CUDA here: only what this service can run is offered


def test_get_jobs_pages_newest_first(shared: ReconDouble) -> None:
    ids = [shared.submit(photos(shared)) for _ in range(3)]
    page = shared.http.get("/jobs", params={"limit": 2}).json()
    assert [j["job_id"] for j in page["jobs"]] == ids[::-1][:2]
    assert page["next_offset"] == 2 and page["total"] >= 3
    rest = shared.http.get("/jobs", params={"limit": 2, "offset": 2}).json()
    assert rest["jobs"][0]["job_id"] == ids[0]
    assert_error(shared.http.get("/jobs", params={"limit": 0}), 400, "limit")
    assert_error(shared.http.get("/jobs", params={"status": "cancelled"}), 400, "status")
    queued = shared.http.get("/jobs", params={"status": "completed", "limit": 100}).json()
    assert all(j["status"] == "completed" for j in queued["jobs"])


def test_openapi_documents_bearer_auth_and_error_bodies_instead_of_422(shared: ReconDouble) -> None:
    spec = shared.http.get("/openapi.json").json()
    submit = spec["paths"]["/jobs"]["post"]
    assert "422" not in submit["responses"] and "400" in submit["responses"]
    assert submit["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
