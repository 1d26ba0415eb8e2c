#!/usr/bin/env bash
# Sets everything up, then runs all the tests: the C++ unit tests (CTest),
# a C++ program built against the installed package (find_package), the
# Python suite (pytest), the reference tensorizer's own test suite
# (scripts/ref_suite.sh), and then the C++ tests and a pytest subset again
# under ASan + UBSan and TSan (scripts/sanitizers.sh; TENSORIZER_SANITIZERS=0
# leaves them out). Arguments go to the full pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== C++ unit tests"
cmake -S . -B build/cpp -G Ninja -DCMAKE_INSTALL_PREFIX="$PWD/build/install" >/dev/null
ninja -C build/cpp >/dev/null
ctest --test-dir build/cpp --output-on-failure -j2

echo "== C++ package: install, then build a consumer with find_package(tensorizer)"
cmake --install build/cpp >/dev/null
cmake -S examples/cpp -B build/consumer -G Ninja -DCMAKE_PREFIX_PATH="$PWD/build/install" >/dev/null
ninja -C build/consumer >/dev/null
python3 - <<'PY'
import torch, tensorizer
s = tensorizer.TensorSerializer("build/consumer/check.tensors")
s.write_state_dict({"w": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3, dtype=torch.bfloat16)})
s.close()
PY
build/consumer/load_file build/consumer/check.tensors

echo "== Python tests (CLI golden tests use the binary built above)"
export TENSORIZER_CLI="$PWD/build/cpp/tensorizer"
set +e
python3 -m pytest -q tests "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  rc=1
fi

echo "== The reference tensorizer 2.12.1's own tests, against ours (scripts/ref_suite.sh)"
bash scripts/ref_suite.sh || rc=1

if [ "${TENSORIZER_SANITIZERS:-1}" != 0 ]; then
  echo "== Sanitizers (scripts/sanitizers.sh)"
  bash scripts/sanitizers.sh || rc=1
fi
exit $rc
