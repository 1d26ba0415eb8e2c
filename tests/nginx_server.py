"""nginx on a free loopback port, for the HTTP and HTTPS suites.

Debian's nginx-light, run in the foreground with its configuration, pid,
logs and temporary directories under a test's own directory, so nothing on
the machine is touched and the process ends with the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import textwrap

import pytest
from remote_common import free_port, server_process

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@contextlib.contextmanager
def run_nginx(root, server_directives: str = ""):
    """Runs nginx on a free loopback port; yields the port.

    ``root`` is its working directory; it serves ``root/www``.
    ``server_directives`` go into the server block; when they name a
    certificate, the listen directive gets ``ssl``.
    """
    if not os.path.exists(NGINX):
        pytest.fail("nginx is not installed (apt-get install nginx-light)")
    served = root / "www"
    served.mkdir(exist_ok=True)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / sub).mkdir(exist_ok=True)
    port = free_port()
    listen_ssl = " ssl" if "ssl_certificate" in server_directives else ""
    conf = root / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            daemon off;
            master_process on;
            worker_processes 2;
            # pytest's temporary directories are private to root.
            user root;
            pid {root}/nginx.pid;
            error_log {root}/error.log warn;
            events {{ worker_connections 256; }}
            http {{
                access_log {root}/access.log;
                client_body_temp_path {root}/client_body;
                proxy_temp_path {root}/proxy;
                fastcgi_temp_path {root}/fastcgi;
                uwsgi_temp_path {root}/uwsgi;
                scgi_temp_path {root}/scgi;
                sendfile on;
                tcp_nopush on;
                keepalive_requests 10000;
                default_type application/octet-stream;
                server {{
                    listen 127.0.0.1:{port}{listen_ssl};
                    root {served};
                    @SERVER_DIRECTIVES@
                }}
            }}
            """
        ).replace("@SERVER_DIRECTIVES@", server_directives.strip().replace("\n", "\n        "))
    )
    cmd = [NGINX, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
    with server_process(cmd, port, log_path=root / "error.log"):
        yield port
