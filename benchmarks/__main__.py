"""The whole CPU benchmark suite, one benchmark after another, then the summary table.

    .venv/bin/python -m benchmarks [--quick] [--only step_time routing ...]

Each benchmark runs in its own process (a clean thread pool, its own Ray) and writes
benchmarks/results/<name>.json; benchmarks/results/summary.md is rebuilt at the end. About 25 minutes on
2 cores (``--quick``: smaller repeats, about 10 minutes, for a look rather than a record). The GPU
benchmark is benchmarks/gpu.sh.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.common import RESULTS

SUITE = {  # name -> (full arguments, quick arguments)
    "step_time": (["--batch", "16", "--repeats", "3"], ["--batch", "4", "--repeats", "2", "--layout-batch", "16"]),
    "routing": (["--repeats", "30"], ["--repeats", "10"]),
    "evaluation": ([], ["--epochs", "3", "--images", "200", "--aa-images", "100", "--repeats", "1"]),
    "data_loader": ([], ["--images", "6000", "--epochs", "2", "--oat-epochs", "2"]),
    "ray_overhead": ([], ["--epochs", "3", "--steps", "10"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=sorted(SUITE))
    ap.add_argument("--out-dir", default=str(RESULTS), help="where the JSON files go")
    a = ap.parse_args()
    names = a.only or list(SUITE)
    failed = []
    t_all = time.perf_counter()
    for i, name in enumerate(names, 1):
        args = SUITE[name][1 if a.quick else 0]
        print(f"\n=== [{i}/{len(names)}] benchmarks.{name} {' '.join(args)}", flush=True)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args, "--out", f"{a.out_dir}/{name}.json"])
        print(f"=== benchmarks.{name}: {'ok' if r.returncode == 0 else f'FAILED ({r.returncode})'} in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        if r.returncode:
            failed.append(name)
    from pathlib import Path

    from benchmarks.summary import table

    text = table(Path(a.out_dir))
    (Path(a.out_dir) / "summary.md").write_text(text)
    print("\n" + text)
    print(f"suite: {len(names) - len(failed)}/{len(names)} benchmarks in {time.perf_counter() - t_all:.0f} s")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
