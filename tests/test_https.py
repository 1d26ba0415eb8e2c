"""Loading .tensors files over HTTPS, with a certificate chain the test makes.

The test creates a CA and a leaf certificate for IP:127.0.0.1 and
DNS:localhost with the openssl command, and nginx serves TLS with the leaf.
No system store trusts that CA, so: without telling the loader about it, a
load fails at once with a certificate-verification error (and is not
retried); trusting it through a CA file (``CAInfo(cacert=...)``), a hashed CA
directory (``CAInfo(capath=...)``) or ``CAInfo(allow_untrusted=True)`` loads
bit-exact. The reference tensorizer 2.12.1 loads the same URLs with its own
CAInfo, and files written by both libraries load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import textwrap
import time

import pytest
import torch
from fault_proxy import FaultProxy
from nginx_server import run_nginx
from remote_common import assert_same, payload_source, run_reference
from test_http import _PAYLOAD, _REF_WRITE, _payload

from tensorizer import TensorDeserializer, TensorSerializer, stream_io

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def _openssl(*args, cwd) -> None:
    res = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, f"openssl {' '.join(args)}: {res.stderr}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Paths of a fresh CA (ca.pem), a leaf signed by it for 127.0.0.1 and
    localhost (leaf.pem, leaf.key), and a directory holding the CA hashed by
    ``openssl rehash`` (capath/)."""
    if not os.path.exists(OPENSSL):
        pytest.fail("the openssl command is not installed (apt-get install openssl)")
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=tensorizer test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost",
        cwd=d,
    )  # fmt: skip
    (d / "leaf.ext").write_text(
        textwrap.dedent(
            """\
            basicConstraints = CA:FALSE
            keyUsage = critical, digitalSignature
            extendedKeyUsage = serverAuth
            subjectAltName = IP:127.0.0.1, DNS:localhost
            """
        )
    )
    _openssl(
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext", "-out", "leaf.pem",
        cwd=d,
    )  # fmt: skip
    capath = d / "capath"
    capath.mkdir()
    shutil.copy(d / "ca.pem", capath / "tensorizer-test-ca.pem")
    _openssl("rehash", str(capath), cwd=d)
    hashed = [p.name for p in capath.iterdir() if re.fullmatch(r"[0-9a-f]{8}\.0", p.name)]
    assert len(hashed) == 1, sorted(p.name for p in capath.iterdir())
    return {"ca": d / "ca.pem", "leaf": d / "leaf.pem", "key": d / "leaf.key", "capath": capath}


@pytest.fixture(scope="module")
def https(tmp_path_factory, pki, ref_python):
    """Port of an nginx serving TLS with the leaf certificate; it serves
    ours.tensors (our serializer) and ref.tensors (the reference's)."""
    root = tmp_path_factory.mktemp("nginx-tls")
    served = root / "www"
    served.mkdir()
    s = TensorSerializer(str(served / "ours.tensors"))
    s.write_state_dict(_payload())
    s.close()
    ref_file = str(served / "ref.tensors")
    run_reference(ref_python, _REF_WRITE, payload_source(*_PAYLOAD), ref_file, timeout_s=120)
    directives = f"ssl_certificate {pki['leaf']};\nssl_certificate_key {pki['key']};"
    with run_nginx(root, directives) as port:
        yield port


def _url(port: int, writer: str = "ours", host: str = "127.0.0.1") -> str:
    return f"https://{host}:{port}/{writer}.tensors"


def _load(url: str, certificate_handling) -> dict:
    stream = stream_io.open_stream(url, "rb", certificate_handling=certificate_handling)
    with TensorDeserializer(stream, device="cpu", num_readers=4, verify_hash=True) as d:
        return dict(d.items())


def test_untrusted_ca_fails_at_once_with_a_verification_error(https):
    # A raw TCP proxy in front (TLS passes through it untouched) counts the
    # connections: a verification failure is final, never retried.
    with FaultProxy("127.0.0.1", https) as proxy:
        url = _url(proxy.port)
        start = time.monotonic()
        with pytest.raises(OSError, match=re.escape(url)) as info:
            TensorDeserializer(url, device="cpu")
        elapsed = time.monotonic() - start
        connections = proxy.connections
    assert "certificate" in str(info.value).lower(), str(info.value)
    assert elapsed < 2, elapsed
    assert connections == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest.mark.parametrize("writer", ["ours", "ref"])
def test_ca_file(https, pki, writer, host):
    loaded = _load(_url(https, writer, host), stream_io.CAInfo(cacert=str(pki["ca"])))
    assert_same(loaded, _payload())


@pytest.mark.parametrize("writer", ["ours", "ref"])
def test_hashed_ca_directory(https, pki, writer):
    loaded = _load(_url(https, writer), stream_io.CAInfo(capath=str(pki["capath"])))
    assert_same(loaded, _payload())


@pytest.mark.parametrize("writer", ["ours", "ref"])
def test_allow_untrusted(https, writer):
    loaded = _load(_url(https, writer), stream_io.CAInfo(allow_untrusted=True))
    assert_same(loaded, _payload())


def test_ca_directory_without_our_ca_still_fails(https, tmp_path):
    # A capath only adds what it holds: an empty directory does not make the
    # test CA trusted, so the load still fails on verification.
    with pytest.raises(OSError, match=r"(?i)certificate"):
        _load(_url(https), stream_io.CAInfo(capath=str(tmp_path)))


_REF_LOAD = textwrap.dedent(
    """\
    import hashlib, json, sys
    import tensorizer
    from tensorizer import TensorDeserializer, stream_io
    url, kind, where = sys.argv[1:4]
    ca = stream_io.CAInfo(**{kind: where})
    stream = stream_io.open_stream(url, "rb", certificate_handling=ca)
    d = TensorDeserializer(stream, device="cpu")
    out = {
        name: [str(t.dtype), list(t.shape),
               hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()]
        for name, t in d.items()
    }
    print(json.dumps({"version": tensorizer.__version__, "tensors": out}))
    """
).replace("import tensorizer\n", "import tensorizer, torch\n", 1)


def _digests(tensors: dict) -> dict:
    return {
        name: [
            str(t.dtype),
            list(t.shape),
            hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest(),
        ]
        for name, t in tensors.items()
    }


@pytest.mark.parametrize("writer", ["ours", "ref"])
@pytest.mark.parametrize("kind", ["cacert", "capath"])
def test_reference_loads_the_same_url_with_its_cainfo(https, pki, ref_python, writer, kind):
    where = str(pki["ca"] if kind == "cacert" else pki["capath"])
    stdout = run_reference(ref_python, _REF_LOAD, _url(https, writer), kind, where, timeout_s=120)
    got = json.loads(stdout.strip().splitlines()[-1])
    assert got["version"] == "2.12.1"
    assert got["tensors"] == _digests(_payload())
