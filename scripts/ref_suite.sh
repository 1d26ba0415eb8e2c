#!/usr/bin/env bash
# Runs the reference tensorizer 2.12.1's own test suite (tests/ of its sdist
# on PyPI) against the tensorizer that $REF_SUITE_PYTHON (default python3)
# imports, offline. The sdist is downloaded once into build/ref_suite; the
# model the tests load from the Hugging Face hub (EleutherAI/gpt-neo-125M)
# is a small stand-in with random weights in a local hub cache made by
# compat/ref_suite/make_hf_cache.py. compat/ref_suite/conftest.py is the
# harness: tests listed in compat/ref_suite/exclusions.txt are left out,
# every other test must pass (a skip fails), and the summary prints the
# number passed and each exclusion with its reason. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=${REF_SUITE_PYTHON:-python3}
work=build/ref_suite
sdist=$work/tensorizer-2.12.1.tar.gz
sdist_sha256=8af9b3be54f31d08d1928e3f25bfaaa963cdc8d716d09559c68ec014f8beb440

mkdir -p "$work"
if ! echo "$sdist_sha256  $sdist" | sha256sum -c --status 2>/dev/null; then
  echo "== pip download tensorizer==2.12.1 (sdist, for its tests/)"
  rm -f "$sdist"
  python3 -m pip download -q --no-deps --no-binary :all: tensorizer==2.12.1 -d "$work"
  echo "$sdist_sha256  $sdist" | sha256sum -c --quiet
fi
rm -rf "$work/tests"
tar -xzf "$sdist" -C "$work" --strip-components=1 tensorizer-2.12.1/tests
cp compat/ref_suite/conftest.py compat/ref_suite/pytest.ini "$work/tests/"

# The cache is rebuilt when the script that makes it changes.
stamp=$(sha256sum compat/ref_suite/make_hf_cache.py | cut -d' ' -f1)
if [ "$(cat "$work/hf_home/stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "== stand-in for EleutherAI/gpt-neo-125M (compat/ref_suite/make_hf_cache.py)"
  rm -rf "$work/hf_home"
  HF_HUB_OFFLINE=1 python3 compat/ref_suite/make_hf_cache.py "$work/hf_home" 2>&1 | grep -v "Writing model shards" || true
  echo "$stamp" >"$work/hf_home/stamp"
fi

export HF_HOME="$repo/$work/hf_home" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# REF_SUITE_EXCLUSIONS=/dev/null runs the excluded tests too (to retire an entry).
export REF_SUITE_EXCLUSIONS="${REF_SUITE_EXCLUSIONS:-$repo/compat/ref_suite/exclusions.txt}"
cd "$work/tests"
set +e
"$python" -m pytest -c pytest.ini --rootdir . -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "the reference suite collected no tests: treating that as a failure" >&2
  rc=1
fi
exit $rc
