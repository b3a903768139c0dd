"""A real S3 API server on loopback for tests: moto's server mode in a child process.

``S3Server`` starts ``python -m moto.server`` on a free port (its data only in memory), creates
the buckets asked for, and says how to reach it (:attr:`env`: the endpoint and credentials for a
:class:`~recon_service.kit.double.ReconDouble` or the service). A backend's CI uses it with the
double to test its S3 path: ``ReconDouble(root, env=server.env | {"MODEL_OUTPUT_ROOT": "s3://models/out"})``.

Needs ``moto[server]`` and ``boto3`` (``pip install 'recon-service[s3-double]'``). With
``check_credentials`` the server enforces IAM: only the access key it makes is accepted (moto
does not sign pre-signed URLs in that mode, so use it for credential checks only).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from recon_service.kit.ports import free_port

START_TIMEOUT_S = 30.0
ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


class S3Server:
    """``moto.server`` on 127.0.0.1; use as a context manager."""

    def __init__(self, buckets: tuple[str, ...] = (), *, check_credentials: bool = False, region: str = "us-east-1") -> None:
        self.buckets = buckets
        self.check_credentials = check_credentials
        self.region = region
        self.port = 0
        self.access_key, self.secret_key = "test-access-key", "test-secret-key"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What the service needs to use this server: endpoint, credentials, region."""
        return {
            "RECON_S3_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region,
        }  # fmt: skip

    def client(self, service: str = "s3", **credentials: str) -> Any:
        """A boto3 client on this server (the server's credentials unless others are given)."""
        import boto3
        from botocore.config import Config

        keys = {"aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key} | credentials
        return boto3.client(service, endpoint_url=self.url, region_name=self.region, config=Config(signature_version="s3v4"), **keys)

    def start(self) -> S3Server:
        import httpx

        self.port = free_port()
        env = {**os.environ, "MOTO_PORT": str(self.port)}
        if self.check_credentials:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"  # create the user, its policy and its key; then enforce
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto.server exited with {self._proc.returncode}; is moto[server] installed?")
            try:
                httpx.get(self.url + "/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto.server did not answer on {self.url} within {START_TIMEOUT_S:g} s") from None
                time.sleep(0.05)
        if self.check_credentials:
            iam = self.client("iam")
            iam.create_user(UserName="recon")
            iam.put_user_policy(UserName="recon", PolicyName="all", PolicyDocument=ALLOW_ALL)
            key = iam.create_access_key(UserName="recon")["AccessKey"]
            self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        s3 = self.client()
        for bucket in self.buckets:
            s3.create_bucket(Bucket=bucket)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
