"""The embedded demo end to end, on a reduced config (the full one is the README's main job)."""

import json

import pytest

from pipeline.launch.demo import run_demo


@pytest.mark.integration
def test_demo_compares_oat_with_dedicated_models(tmp_path, capsys):
    sets = ["train.epochs=2", "train.max_steps_per_epoch=4", "eval.max_images=40", "attack.steps=2",
            "eval.test_steps=3", "model.channels=[8, 16, 16]"]
    summary = run_demo(tmp_path, lambdas=[0.0, 1.0], overrides=sets, progress=False)
    out = capsys.readouterr().out
    assert "SA OAT" in out and "RA PGDAT" in out and str(tmp_path / "tradeoff.png") in out
    assert [p["lambda"] for p in summary["oat"]] == [0.0, 1.0] == [p["lambda"] for p in summary["pgdat"]]
    assert all(p["method"] == "pgdat" for p in summary["pgdat"])
    assert json.loads((tmp_path / "demo.json").read_text())["table"] == summary["table"]
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
    assert {p.name for p in tmp_path.iterdir()} >= {"oat", "pgdat_lambda0", "pgdat_lambda1"}
    # a second run reuses the finished runs instead of training again
    run_demo(tmp_path, lambdas=[0.0, 1.0], overrides=sets, progress=False)
    assert capsys.readouterr().out.count("reusing finished run") == 3
