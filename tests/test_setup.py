"""The test environment itself (issue 9, set-up hygiene)."""

import os
import subprocess

import torch


def test_the_reference_venv_uses_the_pinned_torch(ref_python):
    # scripts/setup.sh installs the reference with --no-deps: its own
    # "torch>=1.9" would pull a multi-GB CUDA build into .venv-ref, and the
    # interop tests would compare two different torch builds.
    probe = subprocess.run(
        [ref_python, "-c", "import torch; print(torch.__version__); print(torch.__file__)"],
        capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    version, path = probe.stdout.split()
    assert version == torch.__version__
    assert os.path.realpath(path) == os.path.realpath(torch.__file__)
