"""The benchmark suite's own plumbing: results carry the machine and config, the GPU script runs (on the CPU
here: there is no GPU on these machines, so `--device cpu` stands in for CUDA), and the summary reads what the
benchmarks wrote and marks what was not measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench(name: str, out: Path, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args, "--out", str(out / f"{name}.json")],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return json.loads((out / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    routing = bench("routing", out, "--batch", "12", "--channels", "16", "--size", "8", "--repeats", "3")
    gpu = bench("gpu", out, "--device", "cpu", "--backbones", "small_cnn", "--methods", "oat", "--batch", "8",
                "--steps", "2", "--warmup", "1", "--compile", "none", "--check-epochs", "1", "--check-images", "40",
                "--check-steps", "5", "--mm-size", "128")
    return out, routing, gpu


@pytest.mark.integration
def test_results_record_machine_config_and_medians(results):
    _, routing, gpu = results
    for doc in (routing, gpu):
        assert doc["machine"]["cpus"] >= 1 and doc["machine"]["torch"] and doc["date"]
    assert routing["config"]["repeats"] == 3
    names = [r["variant"] for r in routing["results"]]
    assert names[0] == "plain BN + FiLM (baseline)" and "CondNorm, one λ group" in names
    assert routing["results"][0]["vs_baseline"] == 1.0 and all(r["ms"] > 0 for r in routing["results"])


@pytest.mark.integration
def test_gpu_script_measures_every_variant_and_the_bf16_check(results):
    _, _, gpu = results
    rows = gpu["results"]
    assert [(r["method"], r["amp"], r["compile"]) for r in rows] == [("oat", False, False), ("oat", True, False)]
    for r in rows:
        assert r["gflop_per_step"] > 0 and r["images_per_s"] == pytest.approx(8 / r["seconds_per_step"])
        assert r["fraction_of_bf16_peak"] == pytest.approx(r["gflops_achieved"] / gpu["peak_gflops"]["bf16"])
    lay = gpu["layouts"]  # the OAT step in both memory layouts, without and with autocast
    assert [(r["backbone"], r["dataset"], r["amp"]) for r in lay] == [("small_cnn", "digits", False),
                                                                      ("small_cnn", "digits", True)]
    assert all(r["channels_last_speedup"] == pytest.approx(r["contiguous_s"] / r["channels_last_s"]) for r in lay)
    check = gpu["bf16_check"]
    assert len(check["points"]) == 6 and check["images"] == 40
    assert check["max_abs_diff_points"] == max(abs(p["diff_points"]) for p in check["points"])


def test_gpu_script_without_a_gpu_is_one_clear_error():
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "no CUDA GPU here" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.integration
def test_summary_reads_the_results_and_marks_what_was_not_measured(results):
    from benchmarks.summary import table

    out, routing, _ = results
    text = table(out)
    one_group = next(r["vs_baseline"] for r in routing["results"] if r["variant"] == "CondNorm, one λ group")
    row = next(line for line in text.splitlines() if line.startswith("| dual BN + FiLM"))
    assert f"{one_group:.2f}×" in row and ("| yes |" in row) == (one_group <= 1.0)
    assert "| GPU: OAT WRN-16-8 bf16, of the bf16 matmul rate | ≥ 40% |" in text  # measured (CPU stand-in)
    not_measured = [line for line in text.splitlines() if "not measured" in line]
    assert any(line.startswith("| FFCV / torchvision") for line in not_measured)


@pytest.mark.integration
def test_science_quick_compares_oat_with_the_dedicated_models(tmp_path):
    """`benchmarks.science --quick` (digits, one seed, 2 epochs, λ ∈ {0, 1}, APGD-CE, one ablation): every row
    has both sides, a difference and its verdict; the report names the attack; a rerun reuses the finished runs."""
    work = tmp_path / "science"
    doc = bench("science", tmp_path, "--quick", "--work", str(work))
    [res] = doc["results"]
    assert res["dataset"] == "digits" and res["attack"] == "apgd-ce" and res["seeds"] == [0]
    assert [(r["method"], r["lambda"]) for r in res["rows"]] == [("oat", 0.0), ("oat", 1.0)]
    for row in res["rows"]:
        for q in ("sa", "pgd20", "strong"):
            mine, ded, vs = row[q]["oat"], row[q]["pgdat"], row[q]["vs"]
            assert 0 <= mine["mean"] <= 1 and 0 <= ded["mean"] <= 1
            assert vs["delta"] == pytest.approx(mine["mean"] - ded["mean"]) and isinstance(vs["met"], bool)
        assert row["strong"]["oat"]["mean"] <= row["sa"]["oat"]["mean"]
    assert res["compute"]["ratio"] > 0
    md = (tmp_path / "science.md").read_text()
    assert "APGD-CE PGDAT" in md and "| OAT | 1 | 1 |" in md
    assert [(a["ablation"], a["lambda"]) for a in res["ablations"]] == [("zero_share_0.5", 0.0),
                                                                         ("zero_share_0.5", 1.0)]
    assert all(a["strong"]["vs"] is not None for a in res["ablations"]) and "| λ = 0 share 50% | 1 |" in md
    runs = sorted(p.name for p in (work / "digits").iterdir())
    assert runs == ["oat_s0", "oat_zero_share_0.5_s0", "pgdat_l0_s0", "pgdat_l1_s0"]
    stamp = (work / "digits" / "oat_s0" / "final.pt").stat().st_mtime_ns
    bench("science", tmp_path, "--quick", "--work", str(work))
    assert (work / "digits" / "oat_s0" / "final.pt").stat().st_mtime_ns == stamp  # reused, not trained again
