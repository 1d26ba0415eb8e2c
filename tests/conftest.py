import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

# interop_cases is shared with ref_driver.py; make it importable whatever
# pytest's import mode.
TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REF_PYTHON = REPO_ROOT / ".venv-ref" / "bin" / "python"


def pytest_report_header(config):
    try:
        import tensorizer
    except ImportError as exc:
        ours = f"not importable ({exc})"
    else:
        ours = f"{getattr(tensorizer, '__version__', '?')} from {tensorizer.__file__}"
    ref = os.environ.get("TENSORIZER_REF_PYTHON") or str(DEFAULT_REF_PYTHON)
    return [f"tensorizer under test: {ours}", f"reference interpreter: {ref}"]


def _have_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: without one they are
    deselected (reported as such, never as skips); bench/gpu_check.sh runs
    them on a GPU machine."""
    if _have_gpu():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]


@pytest.fixture(scope="session")
def ref_python() -> str:
    """The interpreter of the venv holding the reference tensorizer 2.12.1.

    Never skips: the venv is created by our own scripts, so its absence is a
    broken environment, not an optional feature.
    """
    path = os.environ.get("TENSORIZER_REF_PYTHON") or str(DEFAULT_REF_PYTHON)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(
            f"reference interpreter not found at {path!r}: create the venv with"
            " tensorizer==2.12.1 at .venv-ref (python -m venv"
            " --system-site-packages .venv-ref && .venv-ref/bin/pip install"
            " tensorizer==2.12.1) or point TENSORIZER_REF_PYTHON at one",
            pytrace=False,
        )
    # Our package also satisfies "tensorizer==2.12.1" and the venv sees
    # system site-packages: make sure the venv really holds the reference.
    probe = subprocess.run(
        [
            path,
            "-c",
            "import importlib.util as u, tensorizer;"
            "print(tensorizer.__version__, u.find_spec('tensorizer._crypt_info') is not None,"
            " u.find_spec('tensorizer._core') is None)",
        ],
        capture_output=True,
        text=True,
        # As run_reference does: PYTHONPATH would put our package first.
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    if probe.stdout.split() != ["2.12.1", "True", "True"]:
        pytest.fail(
            f"{path} does not import the reference tensorizer 2.12.1"
            f" (got {probe.stdout.strip() or probe.stderr.strip()!r})",
            pytrace=False,
        )
    return path


# The `tensorizer` command built by scripts/test.sh, for the CLI tests.
@pytest.fixture(scope="session")
def cli() -> str:
    path = os.environ.get("TENSORIZER_CLI")
    if not path:
        pytest.fail(
            "TENSORIZER_CLI is not set: build the tool (cmake -S . -B build/cpp -G Ninja &&"
            " ninja -C build/cpp) and set TENSORIZER_CLI=build/cpp/tensorizer"
            " (scripts/test.sh does both)",
            pytrace=False,
        )
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"TENSORIZER_CLI={path!r} is not an executable file", pytrace=False)
    return os.path.abspath(path)


# A real S3 server (SeaweedFS with SigV4 authentication) for the S3 tests;
# see s3_server.py for what it holds.
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from s3_server import running_s3_server

    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_s3_server(tmp_path_factory.mktemp("s3")))
        except (FileNotFoundError, RuntimeError) as exc:
            pytest.fail(str(exc), pytrace=False)
        yield server
