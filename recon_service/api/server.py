"""``recon-service`` / ``python -m recon_service``: load settings, then serve with uvicorn."""

from __future__ import annotations

import sys

from recon_service.api.auth import ensure_token
from recon_service.logs import JOB_LOG_DIR, configure_logging
from recon_service.settings import SettingsError, load_settings


def main() -> int:
    """Start the service on RECON_HOST:RECON_PORT (default 127.0.0.1:9000); returns an exit code."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"recon-service: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, job_log_dir=settings.data_dir / JOB_LOG_DIR)
    settings, generated = ensure_token(settings)
    if generated is not None:
        print(
            "recon-service: RECON_SERVICE_TOKEN is not set; this run accepts only this generated token:\n"
            f"    {generated}\n"
            "Set RECON_SERVICE_TOKEN (and give it to the backend) to keep a token across restarts.",
            file=sys.stderr,
            flush=True,
        )
    if settings.simulated:
        print("recon-service: RECON_PIPELINE=simulate: jobs are SIMULATED (contract double), not reconstructed", file=sys.stderr, flush=True)

    import uvicorn

    from recon_service.api.app import create_app
    from recon_service.api.protocol import JsonErrorH11Protocol

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's lines go through configure_logging's handlers (JSON) too
        timeout_graceful_shutdown=10,
        http=JsonErrorH11Protocol,  # even a request uvicorn cannot parse gets an {"error"} body
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
