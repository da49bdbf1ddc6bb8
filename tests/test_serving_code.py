"""A registered model carries only the code serving needs: the science core, the checkpoint reader, the pyfunc."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.platform.serving import serving_code


def test_served_code_is_the_science_core_and_the_pyfunc(tmp_path):
    root = serving_code(tmp_path)
    files = {p.relative_to(root).as_posix() for p in root.rglob("*.py")}
    assert {"__init__.py", "files.py", "science/model.py", "science/dual_bn.py", "platform/serving.py",
            "platform/serving_model.py"} <= files
    assert not [f for f in files if f.startswith(("launch/", "training/", "data/", "cli", "config"))]
    assert "platform/tracking.py" not in files and "platform/services.py" not in files
    # the copy imports on its own: load_model and the pyfunc class, and pulls in neither Ray nor the launchers
    code = ("import sys; import pipeline; from pipeline.platform.serving import OATPyfunc; "
            "from pipeline.science.model import load_model; "
            "assert pipeline.__file__.startswith(sys.argv[1]), pipeline.__file__; "
            "assert 'ray' not in sys.modules and 'pipeline.launch' not in sys.modules; print('ok')")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
