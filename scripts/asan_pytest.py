"""pytest in an interpreter that loaded the ASan runtime, for the ASan build
of our extension (scripts/sanitizers.sh starts it with LD_PRELOAD and
ASAN_OPTIONS set).

The runtime must be preloaded into every process that loads the extension:
this one, and the Pythons that tests start with ``sys.executable``. Every
other child (curl run by the reference tensorizer, nginx, redis-server, the
reference's interpreter, our CLI) runs without it: they run none of the
extension's code, and clang 14's runtime preloaded into curl makes it hang
(``curl http://127.0.0.1:1/`` never returns). The CLI passed in
TENSORIZER_CLI is the ASan build, which links its own runtime and so gets
ASan's default options, leak checking included.

Usage: LD_PRELOAD=<asan runtime> ASAN_OPTIONS=... python asan_pytest.py [PYTEST ARGS]
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ASAN_ENV: dict[str, str] = {}
_popen_init = subprocess.Popen.__init__


def _popen_with_asan_for_our_python(self, args, *rest, **kwargs):
    program = kwargs.get("executable") or (args if isinstance(args, (str, bytes)) else args[0])
    if os.fspath(program) == sys.executable:
        kwargs["env"] = {**(kwargs.get("env") or os.environ), **ASAN_ENV}
    _popen_init(self, args, *rest, **kwargs)


if __name__ == "__main__":
    if "asan" not in os.environ.get("LD_PRELOAD", ""):
        sys.exit("asan_pytest.py: start it with LD_PRELOAD naming the ASan runtime")
    ASAN_ENV.update((name, os.environ.pop(name, "")) for name in ("LD_PRELOAD", "ASAN_OPTIONS"))
    import tensorizer._core as core

    venv = os.path.realpath(sys.prefix) + os.sep
    if sys.prefix == sys.base_prefix or not os.path.realpath(core.__file__).startswith(venv):
        sys.exit(f"asan_pytest.py: tensorizer._core is {core.__file__}, not this venv's ASan build")
    subprocess.Popen.__init__ = _popen_with_asan_for_our_python
    sys.exit(pytest.main(sys.argv[1:]))
