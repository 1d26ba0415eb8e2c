"""Drive the reference tensorizer (2.12.1) for the interoperability suite.

Run with the reference interpreter (``.venv-ref/bin/python``), never with the
one that has our package.  Commands:

    write CASE PATH
        Write interop case CASE to PATH with the reference serializer.
    dump PATH OUT [--case CASE] [--lazy] [--num-readers N] [--verify-hash]
                  [--filter PREFIX]
        Load PATH with the reference TensorDeserializer (device="cpu") and
        pickle ``interop_cases.summarize(...)`` to OUT.  --case supplies the
        decryption key and the module for load_into_module.
    batch JOBS OUT
        Run a JSON list of jobs in one interpreter (torch import is slow):
        {"op": "write", "case": ..., "path": ...} or
        {"op": "dump", "case": ..., "path": ..., "options": {...}} or
        {"op": "write_encrypted", "path": ...} (see write_encrypted).
        OUT receives a pickle {"tensorizer": {...}, "results": [...]} where a
        write result is None or an error record, a dump result a summary.

Every result is computed with the library's public API only.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import traceback
import warnings

# Run as a script, so this file's directory is sys.path[0].
import interop_cases

import tensorizer

warnings.filterwarnings("ignore")


def library_info() -> dict:
    return {"version": tensorizer.__version__, "file": tensorizer.__file__}


def write_case(case_name: str, path: str):
    case = interop_cases.CASES_BY_NAME[case_name]
    try:
        case.write(tensorizer, path)
    except Exception as exc:
        return (
            *interop_cases.error_record(exc),
            "".join(traceback.format_exception_only(type(exc), exc)).strip(),
        )
    return None


def write_encrypted(path: str) -> dict:
    """Write interop_cases.encrypted_payload() encrypted with a random key
    and record how the reference itself reads the file back: without a key
    (an error record plus its message) and with the key (read_tensors)."""
    key = interop_cases.write_encrypted_random_key(tensorizer, path)

    def read(encryption):
        try:
            d = tensorizer.TensorDeserializer(
                path, device="cpu", lazy_load=True, encryption=encryption
            )
            try:
                return [
                    (int(i), int(t), name, interop_cases.describe_tensor(x))
                    for i, t, name, x in d.read_tensors()
                ]
            finally:
                d.close()
        except Exception as exc:
            return (*interop_cases.error_record(exc), str(exc))

    return {
        "key": key,
        "without_key": read(None),
        "with_key": read(tensorizer.DecryptionParams.from_key(key)),
    }


def dump(path: str, case_name: str | None, options: dict) -> dict:
    case = (
        interop_cases.CASES_BY_NAME[case_name]
        if case_name
        else interop_cases.Case(name="adhoc", write=None, version=0)
    )
    return interop_cases.summarize(tensorizer, path, case, interop_cases.LoadOptions(**options))


def run_job(job: dict):
    if job["op"] == "write":
        return write_case(job["case"], job["path"])
    if job["op"] == "dump":
        return dump(job["path"], job.get("case"), job.get("options", {}))
    if job["op"] == "write_encrypted":
        return write_encrypted(job["path"])
    raise ValueError(f"unknown op {job['op']!r}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_write = sub.add_parser("write")
    p_write.add_argument("case")
    p_write.add_argument("path")

    p_dump = sub.add_parser("dump")
    p_dump.add_argument("path")
    p_dump.add_argument("out")
    p_dump.add_argument("--case")
    p_dump.add_argument("--lazy", action="store_true")
    p_dump.add_argument("--num-readers", type=int, default=1)
    p_dump.add_argument("--verify-hash", action="store_true")
    p_dump.add_argument("--filter", dest="filter_prefix")

    p_batch = sub.add_parser("batch")
    p_batch.add_argument("jobs")
    p_batch.add_argument("out")

    args = parser.parse_args(argv)
    if args.command == "write":
        error = write_case(args.case, args.path)
        if error is not None:
            print(error[-1], file=sys.stderr)
            return 1
        return 0
    if args.command == "dump":
        summary = dump(
            args.path,
            args.case,
            {
                "lazy_load": args.lazy,
                "num_readers": args.num_readers,
                "verify_hash": args.verify_hash,
                "filter_prefix": args.filter_prefix,
            },
        )
        with open(args.out, "wb") as f:
            pickle.dump({"tensorizer": library_info(), "summary": summary}, f)
        return 0
    with open(args.jobs) as f:
        jobs = json.load(f)
    results = [run_job(job) for job in jobs]
    with open(args.out, "wb") as f:
        pickle.dump({"tensorizer": library_info(), "results": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
