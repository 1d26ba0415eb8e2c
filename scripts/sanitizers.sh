#!/usr/bin/env bash
# The tests again under sanitizers, built with clang from the presets in
# CMakePresets.json. scripts/test.sh runs this after the plain tests; it runs
# alone too, once scripts/setup.sh has.
#
#   1. build/asan: every ctest test under ASan + UBSan, leaks checked.
#   2. build/tsan: every ctest test under TSan. Among them
#      tests/cpp/servers/concurrency_test.cc drives the load pipeline, the
#      HTTP, Redis and S3 connection pools and the S3 uploader from many
#      threads against nginx, redis-server and SeaweedFS on loopback.
#   3. An ASan + UBSan build of the Python extension in its own venv
#      (build/asan-venv, built in build/asan-ext; the normal install stays
#      unsanitized), and the pytest files that reach every backend and the
#      save path through it: local files and the save path (test_api,
#      test_bad_input, test_safetensors), encryption, HTTP, S3 reads and
#      uploads, Redis, the CLI (the build/asan binary), and cancellation
#      (Ctrl-C during loads, uploads and key derivations; ~45 s).
#
# Cost, measured on the 2-core CI machine (shared, load 1-2): about 8
# minutes from empty build directories on top of the plain run's ~5 (the
# three builds ~5 min, ctest under both ~30 s, the pytest subset ~2.5 min);
# about 3 minutes when the builds are up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

# clang 14's TSan cannot place its shadow memory when the kernel randomizes
# mmap with more than 28 bits ("FATAL: ThreadSanitizer: unexpected memory
# mapping"); without ASLR it always can.
no_aslr=()
if setarch "$(uname -m)" -R true 2>/dev/null; then
  no_aslr=(setarch "$(uname -m)" -R)
fi

for preset in asan tsan; do
  echo "== C++ tests under ${preset} (build/${preset})"
  cmake --preset "$preset" >/dev/null
  ninja -C "build/$preset" >/dev/null
  "${no_aslr[@]}" ctest --preset "$preset" -j2
done

echo "== Python tests against an ASan + UBSan build of the extension (build/asan-venv)"
[ -x build/asan-venv/bin/python ] || python3 -m venv --system-site-packages build/asan-venv
build/asan-venv/bin/python -m pip install -q --no-build-isolation \
  -C build-dir=build/asan-ext -C cmake.build-type=RelWithDebInfo \
  -C cmake.define.CMAKE_CXX_COMPILER=clang++ -C cmake.define.TENSORIZER_SANITIZE=address . \
  2>&1 | grep -v -E "^WARNING: (Running pip|Location)|^Not uninstalling|^Can't uninstall" || true

# Python is not instrumented, so the ASan runtime has to be in the process
# before anything else: preloaded. clang leaves the runtime out of a shared
# library (the extension), so without it the import fails on __asan_*
# symbols; asan_pytest.py checks that the extension is this venv's.
# detect_leaks=0 for Python only: CPython and torch keep their own memory
# until exit on purpose (interned objects, module state, allocator arenas),
# which LeakSanitizer would report by the thousand; our C++ is leak-checked
# by the ctest runs above, and the ASan CLI the tests run checks its own.
# The RSS bound of the upload-window test measures the allocator, and ASan
# keeps 256 MiB of freed memory in quarantine on purpose: it is left out.
export TENSORIZER_CLI="$PWD/build/asan/tensorizer"
LD_PRELOAD="$(clang++ -print-file-name=libclang_rt.asan-x86_64.so)" \
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  build/asan-venv/bin/python scripts/asan_pytest.py -q -p no:cacheprovider \
  tests/test_api.py tests/test_bad_input.py tests/test_safetensors.py tests/test_encryption.py \
  tests/test_http.py tests/test_s3.py tests/test_s3_upload.py tests/test_redis.py tests/test_cli.py \
  tests/test_interrupt.py tests/test_hash_checks.py \
  --deselect tests/test_s3_upload.py::test_s3_upload_memory_is_bounded_by_the_upload_window
