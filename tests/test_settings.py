"""Configuration: validated once, errors name the variable; the service is never open."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from recon_service.kit import ReconDouble
from recon_service.settings import SettingsError, load_settings
from tests.helpers import REPO, TOKEN, double


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"RECON_MAX_WORKERS": "0"}, "RECON_MAX_WORKERS"),
        ({"RECON_PORT": "http"}, "RECON_PORT"),
        ({"RECON_PIPELINE": "fast"}, "RECON_PIPELINE"),
        ({"RECON_JOB_TIMEOUT_S": "-5"}, "RECON_JOB_TIMEOUT_S"),
        ({"RECON_CALLBACK_MAX_AGE_S": "0"}, "RECON_CALLBACK_MAX_AGE_S"),
        ({"RECON_CALLBACK_URL": "backend:8000"}, "RECON_CALLBACK_URL"),
        ({"RECON_CALLBACK_URL": "http://backend:8000"}, "RECON_CALLBACK_TOKEN"),
    ],
)
def test_invalid_settings_name_the_environment_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(env)


def test_settings_read_every_documented_variable(tmp_path: object) -> None:
    settings = load_settings(
        {
            "RECON_SERVICE_TOKEN": "s", "RECON_CALLBACK_URL": "http://backend:8000/", "RECON_CALLBACK_TOKEN": "c",
            "MODEL_OUTPUT_ROOT": "/srv/models", "RECON_PHOTOS_ROOT": "/srv/uploads", "RECON_DATA_DIR": "/srv/data",
            "RECON_MAX_WORKERS": "3", "RECON_JOB_TIMEOUT_S": "600", "RECON_CALLBACK_MAX_AGE_S": "60",
            "RECON_HOST": "0.0.0.0", "RECON_PORT": "9100", "RECON_PIPELINE": "simulate",
        }
    )  # fmt: skip
    assert settings.callback_url == "http://backend:8000" and settings.callback_token.get_secret_value() == "c"  # type: ignore[union-attr]
    assert str(settings.job_output_dir("j")) == "/srv/models/j" and str(settings.db_path) == "/srv/data/jobs.sqlite3"
    assert (settings.max_workers, settings.job_timeout_s, settings.port, settings.simulated) == (3, 600, 9100, True)


def test_the_server_refuses_to_start_with_invalid_settings_and_names_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "recon_service"], cwd=REPO, env={"PATH": "/usr/bin:/bin", "RECON_MAX_WORKERS": "zero"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "RECON_MAX_WORKERS" in result.stderr


def test_without_a_configured_token_a_generated_one_is_printed_once_and_required(
    start_service: Callable[..., ReconDouble],
) -> None:
    service = start_service(env={"RECON_SERVICE_TOKEN": ""})
    tokens = re.findall(r"generated token:\s+(\S+)", service.log())
    assert len(tokens) == 1
    generated = tokens[0]
    assert service.log().count(generated) == 1
    assert httpx.get(service.url + "/jobs", headers={"Authorization": f"Bearer {generated}"}).status_code == 200
    assert httpx.get(service.url + "/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    assert httpx.get(service.url + "/jobs").status_code == 401


def test_a_second_service_on_the_same_data_dir_refuses_to_start(start_service: Callable[..., ReconDouble]) -> None:
    first = start_service()
    second = double(first.root, first.photos_root)
    second.start(wait=False)
    assert second.wait_exit(timeout=60) != 0
    assert "already uses RECON_DATA_DIR" in second.log()
    assert first.http.get("/readyz").status_code == 200


def test_the_service_imports_no_heavy_pipeline_libraries() -> None:
    code = (
        "import sys, recon_service.api.app, recon_service.api.server, recon_service.jobs.submission, pipelines.simulate;"
        "print(','.join(m for m in ('pycolmap', 'open3d', 'trimesh', 'cv2', 'scipy', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr
