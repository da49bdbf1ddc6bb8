"""The deep run of the generated-bad-input harness (tests/fuzzing.py): thousands of invalid ``oat`` invocations and
REST requests, each checked against the invariants (exit 2, one error line naming the problem, no traceback,
nothing written, no training; HTTP 400 and the server still serving).

    .venv/bin/python -m benchmarks.fuzz [--examples 600] [--seed 0] [--out benchmarks/results/fuzz.json]

``--examples`` is per generator (jobs, options, URIs and services, REST requests; the fixed path cases run once
each), so the default runs about 2,400 generated cases. A failure stops the run with hypothesis's shrunk example
(record it as an ``@example`` in tests/test_fuzz.py once fixed). Writes fuzz.json and fuzz.md: cases per kind,
the slowest refusal, the time per case.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed, settings

from benchmarks.common import RESULTS, write_result
from tests import fuzzing


def run(examples: int, rng_seed: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="oat-fuzz-"))
    box = fuzzing.Sandbox(root / "sandbox")
    deep = settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
    phases: dict[str, float] = {}

    def phase(name: str, fn: Any) -> None:
        t0 = time.perf_counter()
        n0 = box.stats["cases"]
        fn()
        phases[name] = time.perf_counter() - t0
        print(f"  {name}: {box.stats['cases'] - n0} cases in {phases[name]:.0f} s", flush=True)

    @seed(rng_seed)
    @deep
    @given(case=fuzzing.job_cases())
    def jobs(case: fuzzing.Case) -> None:
        fuzzing.run_case(box, case)

    @seed(rng_seed)
    @deep
    @given(case=fuzzing.option_cases())
    def options(case: fuzzing.Case) -> None:
        fuzzing.run_case(box, case)

    @seed(rng_seed)
    @deep
    @given(case=fuzzing.uri_cases())
    def uris(case: fuzzing.Case) -> None:
        fuzzing.run_case(box, case)

    def paths() -> None:
        for kind, argv, name in fuzzing.PATH_CASES:
            fuzzing.run_case(box, fuzzing.Case(kind, argv, [name]))

    model = fuzzing.build_served_model(root / "served")

    @seed(rng_seed)
    @deep
    @given(req=fuzzing.bad_requests())
    def rest(req: tuple[str, str]) -> None:
        fuzzing.check_rest_case(model, *req, stats=box.stats)

    t0 = time.perf_counter()
    for name, fn in (("job files", jobs), ("option values", options), ("paths", paths),
                     ("URIs and unreachable services", uris), ("REST requests", rest)):
        phase(name, fn)
    total = time.perf_counter() - t0
    s = box.stats
    return {"examples_per_generator": examples, "seed": rng_seed, "cases": s["cases"], "seconds": round(total, 1),
            "phases_s": {k: round(v, 1) for k, v in phases.items()},
            "by_kind": dict(sorted(s["by_kind"].items())),
            "slowest_refusal_s": round(s["slowest"][0], 2), "slowest_refusal": s["slowest"][1].replace(str(root), "…"),
            "slowest_rest_s": round(s.get("slowest_rest", (0.0, ""))[0], 3),
            "slowest_rest_kind": s.get("slowest_rest", (0.0, ""))[1], "failures": 0}


def end_to_end(root: Path) -> list[dict[str, Any]]:
    """The issue's cases as a user meets them: ``oat`` in a fresh process (start-up included), timed; a Ray address
    where nothing listens, and one where a socket listens but no Ray answers (the connect watchdog)."""
    import socket
    import subprocess
    import sys

    import yaml

    job = root / "job.yaml"
    job.write_text(yaml.safe_dump(fuzzing.BASE_JOB, sort_keys=False))
    (root / "afile").write_text("x")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never speaks Ray's protocol
    port = silent.getsockname()[1]
    cases = [
        ("Ray address, nothing listening", ["run", str(job), "--address", "127.0.0.1:1"]),
        ("Ray address, a silent listener", ["run", str(job), "--address", f"127.0.0.1:{port}"]),
        ("--mlflow ftp://x/y", ["train", str(job), "--mlflow", "ftp://x/y", "--out", str(root / "o1")]),
        ("--out an existing file", ["train", str(job), "--out", str(root / "afile")]),
        ("--set method.lambda_choices=[]", ["train", str(job), "--set", "method.lambda_choices=[]",
                                            "--out", str(root / "o2")]),
        ("--set attack.eps=3", ["train", str(job), "--set", "attack.eps=3", "--out", str(root / "o3")]),
    ]
    env = {**os.environ, "OAT_RAY_CONNECT_TIMEOUT_S": "5"}
    out = []
    try:
        for what, argv in cases:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], capture_output=True, text=True, env=env,
                               timeout=120, cwd=root)
            dt = time.perf_counter() - t0
            line = next((ln for ln in r.stderr.splitlines() if "error:" in ln), r.stderr.strip()[-200:])
            out.append({"case": what, "exit": r.returncode, "seconds": round(dt, 1),
                        "error": line.replace(str(root), "…")[:240], "traceback": "Traceback" in r.stderr})
            print(f"  {what}: exit {r.returncode} in {dt:.1f} s", flush=True)
    finally:
        silent.close()
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Generated bad input: {doc['cases']:,} cases, {doc['failures']} failures",
             "",
             f"`python -m benchmarks.fuzz --examples {doc['examples_per_generator']} --seed {doc['seed']}` "
             f"({doc['date']}, {doc['machine'].get('cpus')} CPUs): every case invalid by construction "
             "(tests/fuzzing.py); each `oat` case ended with exit 2, one error line naming the key, option or path, "
             "no traceback, nothing written and no training; each REST request got HTTP 400 and the next good "
             "request 200.",
             "",
             f"* slowest `oat` refusal: **{doc['slowest_refusal_s']} s** (`oat {doc['slowest_refusal']}`)",
             f"* slowest REST refusal: {doc['slowest_rest_s']} s ({doc['slowest_rest_kind']})",
             f"* total {doc['seconds']:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in doc["phases_s"].items()),
             "",
             "## The reported cases, end to end",
             "",
             "A fresh `oat` process each (start-up included), `OAT_RAY_CONNECT_TIMEOUT_S=5`:",
             "",
             "| case | exit | seconds | the error line |", "|---|---:|---:|---|"]
    lines += [f"| {c['case']} | {c['exit']} | {c['seconds']} | `{c['error']}` |" for c in doc["end_to_end"]]
    lines += ["", "## Generated cases per kind", "", "| kind of case | cases |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in doc["by_kind"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=600, help="generated cases per generator")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "fuzz.json"))
    a = ap.parse_args()
    os.environ.setdefault("OAT_RAY_CONNECT_TIMEOUT_S", "2")
    print(f"benchmarks.fuzz: {a.examples} generated cases per generator, seed {a.seed}", flush=True)
    body = run(a.examples, a.seed)
    print("end to end:", flush=True)
    body["end_to_end"] = end_to_end(Path(tempfile.mkdtemp(prefix="oat-fuzz-e2e-")))
    if any(c["exit"] != 2 or c["traceback"] for c in body["end_to_end"]):
        body["failures"] += 1
    path = write_result("fuzz", body, a.out)
    doc = json.loads(path.read_text())
    path.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
