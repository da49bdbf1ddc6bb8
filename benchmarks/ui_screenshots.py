"""Screenshots of the MLflow UI after the main job, from a real run (the README shows them).

    python -m benchmarks.ui_screenshots [--reduced] [--work runs/ui_screenshots] [--out docs/images]

Starts a real ``mlflow server`` (SQLite in ``WORK/mlflow``, artifacts proxied to a folder there), runs the main job
(``oat run jobs/pipeline_digits.yaml``; ``--reduced``: the test suite's few-step version) against it, then drives
headless Chromium over the DevTools protocol and writes

* ``mlflow_chart_view.png``: the experiment's chart view as it opens, the test curves over λ of OAT, OATS and the
  dedicated PGDAT models;
* ``mlflow_model_card.png``: the registered OAT model's version page (its model card);
* ``mlflow_compare_run.png``: the comparison run's overview (its table and plot).

Rerunning reuses the finished job (every stage is resumable). The MLflow Assistant side panel is closed before each
shot. ``tests/test_pipeline.py`` reads the same pages with :func:`inspect_ui` and asserts on their DOM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIZE = (1600, 1000)
# the test curves on the chart view: their charts and, per run, the colour of its line
CURVES = ("test/clean_acc", "test/robust_acc/apgd")
_CLOSE_ASSISTANT = ("(() => { const b = document.querySelector("
                    "'[data-component-id=\"mlflow.assistant.chat_panel.close\"]');"
                    " if (b) { b.click(); return true; } return false; })()")


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page): open, wait for a condition, evaluate,
    screenshot. Used as ``async with Browser() as b``."""

    def __init__(self, size: tuple[int, int] = SIZE, timeout: float = 120.0):
        self.size, self.timeout = size, timeout
        self._proc: subprocess.Popen[str] | None = None
        self._profile = ""
        self._ws: Any = None
        self._session: Any = None
        self._id = 0

    async def __aenter__(self) -> Browser:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise RuntimeError("chromium is not installed: infra/setup.sh installs it")
        self._profile = tempfile.mkdtemp(prefix="oat-chromium-")
        self._proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--no-first-run", f"--window-size={self.size[0]},{self.size[1]}", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            await self._connect()
        except BaseException:
            await self.__aexit__()  # no Chromium, session or profile left behind
            raise
        return self

    async def _connect(self) -> None:
        import aiohttp

        assert self._proc is not None and self._proc.stderr is not None
        port = None
        deadline = time.monotonic() + 60
        while port is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("chromium did not open its DevTools endpoint within 60 s")
            try:  # a silent Chromium is killed by __aexit__, which ends the blocked read
                line = await asyncio.wait_for(asyncio.to_thread(self._proc.stderr.readline), left)
            except TimeoutError:
                continue
            if not line and self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited ({self._proc.returncode}) before its DevTools endpoint opened")
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = int(m.group(1)) if m else None
        # stderr keeps being written: drain it so Chromium never blocks on a full pipe
        asyncio.get_running_loop().run_in_executor(None, self._proc.stderr.read)
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Page.enable")
        await self.send("Emulation.setDeviceMetricsOverride",
                        width=self.size[0], height=self.size[1], deviceScaleFactor=1, mobile=False)

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        shutil.rmtree(self._profile, ignore_errors=True)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        my = self._id
        await self._ws.send_json({"id": my, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self._ws.receive_json(), self.timeout)
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    async def eval(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"in the page: {r['exceptionDetails'].get('text')} ({expression[:80]})")
        return r.get("result", {}).get("value")

    async def open(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def wait_for(self, expression: str, what: str, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            try:
                value = await self.eval(expression)
            except RuntimeError:  # the page is still loading (a navigation replaced its context): ask again
                value = None
            if value:
                return value
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the page never showed {what} within {timeout or self.timeout:.0f} s")

    async def screenshot(self, path: Path) -> Path:
        await self.eval(_CLOSE_ASSISTANT)
        await asyncio.sleep(1.0)  # the panel's closing animation and a last render
        data = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path


# scroll the chart area (the scrollable ancestor of the chart cards) by %d px
_SCROLL = ("(() => { let el = document.querySelector('h4[title]'); while (el && !(el.scrollHeight > el.clientHeight + 5"
           " && ['auto', 'scroll'].includes(getComputedStyle(el).overflowY))) el = el.parentElement;"
           " if (el) el.scrollTop += %d; })()")
# what the chart view shows: per chart title, the colours of its lines (a line: a path with at least two points);
# per run in the table, its colour
_CHARTS_JS = """(() => {
  const charts = {};
  for (const h of document.querySelectorAll('h4[title]')) {
    let card = h; while (card && !card.querySelector('svg.main-svg')) card = card.parentElement;
    if (!card) continue;
    charts[h.title] = {legend: card.innerText, lines: [...card.querySelectorAll('path.js-line')]
        .filter(p => (p.getAttribute('d') || '').includes('L')).map(p => p.style.stroke)};
  }
  const runs = {};
  for (const label of document.querySelectorAll('[data-testid="experiment-view-table-run-color"]')) {
    const row = label.parentElement; const a = row && row.querySelector('a');
    if (a) runs[a.textContent.trim()] = label.style.backgroundColor;
  }
  return {charts, runs};
})()"""


async def inspect_ui(uri: str, experiment: str, model: str, shots: Path | None = None) -> dict[str, Any]:
    """Open the experiment's chart view, the registered model's first version and the comparison run in headless
    Chromium; return what they show (the charts' lines by colour, the runs' colours, the model card's text, the
    comparison run's description) and, with ``shots``, write the three screenshots there."""
    import mlflow

    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} at {uri}"
    cmp_runs = client.search_runs([exp.experiment_id], "tags.kind = 'comparison'", max_results=1,
                                  order_by=["attributes.start_time ASC"])
    out: dict[str, Any] = {}
    async with Browser() as b:
        await b.open(f"{uri}/#/experiments/{exp.experiment_id}/runs?compareRunsMode=CHART")
        # a chart card renders when it scrolls into view: scroll the chart area until both curves are there
        want = " && ".join(f"document.querySelector('h4[title=\"{c}\"]')" for c in CURVES)
        await b.wait_for(f"!!({want}) || ({_SCROLL % 400}, false)", "the test-curve charts")
        # the lines are drawn once a chart is in view and its metric histories are fetched
        await b.wait_for(f"(() => {{ const r = {_CHARTS_JS}; return {json.dumps(list(CURVES))}.every(c => "
                         "((r.charts[c] || {}).lines || []).length >= 2); })()", "the curves' lines")
        await asyncio.sleep(2.0)
        out["chart_view"] = await b.eval(_CHARTS_JS)
        await b.eval(_SCROLL % -100000)  # back to the top: the view as it opens
        if shots:
            out["chart_view_png"] = str(await b.screenshot(shots / "mlflow_chart_view.png"))
        await b.open(f"{uri}/#/models/{model}/versions/1")
        out["model_card"] = await b.wait_for("(() => { const t = document.body.innerText; "
                                             "return t.includes('Serves') && t.includes('Threat model') ? t : ''; })()",
                                             "the model card")
        if shots:
            out["model_card_png"] = str(await b.screenshot(shots / "mlflow_model_card.png"))
        if cmp_runs:
            run = cmp_runs[0]
            await b.open(f"{uri}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}")
            await b.wait_for("(() => { const t = document.body.innerText; return t.includes('Show more') || "
                             "t.includes('Compute'); })()", "the comparison's description")
            await b.eval("[...document.querySelectorAll('button, a, span')].find(e => e.textContent.trim() === "
                         "'Show more')?.click()")
            out["compare_run"] = await b.wait_for(
                "(() => { const t = document.body.innerText; return t.includes('Compute') ? t : ''; })()",
                "the comparison's description")
            await b.wait_for("[...document.images].some(i => i.src.includes('compare.png') && i.naturalWidth > 0)",
                             "the comparison plot in the description", timeout=30)
            if shots:
                out["compare_run_png"] = str(await b.screenshot(shots / "mlflow_compare_run.png"))
    return out


REDUCED = ["train.epochs=1", "train.max_steps_per_epoch=3", "sweep.lambdas=[0.0, 1.0]", "attack.steps=2",
           "eval.max_images=100", "eval.test_steps=2", "pipeline.oats_widths=[0.5, 1.0]",
           "tracking.system_metrics=false", "tracking.register_flagged=true"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ui_screenshots", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/ui_screenshots", help="the MLflow store, the job's runs (reused)")
    ap.add_argument("--out", default=str(REPO / "docs" / "images"), help="where the screenshots go")
    ap.add_argument("--reduced", action="store_true", help="the few-step main job of the tests (minutes, not 15)")
    a = ap.parse_args(argv)
    from pipeline.platform.services import MlflowServer, free_ports

    work = Path(a.work).resolve()
    server = MlflowServer(work / "mlflow", {}, port=free_ports(1)[0],
                          artifacts_destination=str(work / "mlflow" / "artifacts")).start()
    try:
        sets = [*(REDUCED if a.reduced else []), f"tracking.uri={server.uri}", f"ray.storage_path={work / 'ray'}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # the embedded default: local Ray
        cmd = [sys.executable, "-m", "pipeline.cli", "run", str(REPO / "jobs" / "pipeline_digits.yaml"),
               "--out", str(work / "main"), *(x for s in sets for x in ("--set", s))]
        print(f"main job against {server.uri}: {work / 'main'}", flush=True)
        if subprocess.run(cmd, env=env, cwd=work).returncode != 0:
            print("the main job failed", file=sys.stderr)
            return 1
        seen = asyncio.run(inspect_ui(server.uri, "digits-pipeline", "digits_pipeline_oat", Path(a.out)))
    finally:
        server.stop()
    for k in ("chart_view_png", "model_card_png", "compare_run_png"):
        if k in seen:
            print(f"{k[:-4]}: {seen[k]}")
    charts = seen["chart_view"]["charts"]
    print("curves:", {c: len(charts.get(c, {}).get("lines", [])) for c in CURVES}, "lines; runs:",
          sorted(seen["chart_view"]["runs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
