"""Runs a C++ test binary against real servers on loopback.

Starts nginx (its root in a temporary directory, plus a /whole/ location
without range support), redis-server and SeaweedFS's S3 gateway, with the
same helpers as the Python suites (tests/nginx_server.py,
tests/s3_server.py), then runs the binary with their addresses in TZR_TEST_*
variables and exits with its status. ctest runs
tests/cpp/servers/concurrency_test.cc this way in every build, and
scripts/sanitizers.sh under ASan and TSan.

Usage: run_with_servers.py BINARY [GTEST ARGS...]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nginx_server import run_nginx  # noqa: E402
from remote_common import free_port, server_process  # noqa: E402
from s3_server import running_s3_server  # noqa: E402

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@contextlib.contextmanager
def run_redis(directory: Path):
    """redis-server on a free loopback port, no persistence; yields the port."""
    port = free_port()
    conf = directory / "redis.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            bind 127.0.0.1
            port {port}
            daemonize no
            save ""
            appendonly no
            dir {directory}
            logfile {directory}/redis.log
            """
        )
    )
    with server_process([REDIS_SERVER, str(conf)], port, log_path=directory / "redis.log"):
        yield port


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tzr-servers-")))
        for sub in ("nginx", "redis", "s3"):
            (root / sub).mkdir()
        http_port = stack.enter_context(
            run_nginx(root / "nginx", "location /whole/ { max_ranges 0; }")
        )
        redis_port = stack.enter_context(run_redis(root / "redis"))
        s3 = stack.enter_context(running_s3_server(root / "s3"))
        env = dict(os.environ)
        env.update(
            TZR_TEST_HTTP_ROOT=str(root / "nginx" / "www"),
            TZR_TEST_HTTP_URL=f"http://127.0.0.1:{http_port}",
            TZR_TEST_REDIS_PORT=str(redis_port),
            TZR_TEST_S3_ENDPOINT=s3.endpoint_url,
            TZR_TEST_S3_ACCESS_KEY=s3.access_key,
            TZR_TEST_S3_SECRET_KEY=s3.secret_key,
            TZR_TEST_S3_REGION=s3.region,
            TZR_TEST_S3_BUCKET=s3.bucket,
        )
        return subprocess.run(argv[1:], env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
