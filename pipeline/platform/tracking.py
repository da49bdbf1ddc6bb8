"""MLflow tracking behind a narrow interface: :func:`begin` before training, a :class:`Tracker` on rank 0.

* :func:`begin` runs in the process that launches the job (``oat train``, the ``oat run`` driver), before any
  training: it reaches the server, finds or creates the experiment, finds the run of this job (tag
  ``oat_run_key``, a hash of the job's name and where it keeps its state: a resumed or restarted job continues
  the same MLflow run) or creates it, logs the flattened resolved config as params, the tags (method, backbone,
  dataset, git commit) and the resolved config as an artifact. That upload also proves the artifact store
  takes writes. Any failure is one :class:`TrackingError` with a clear message.
* :class:`Tracker` (rank 0 of the run) never blocks training: every call appends an event to an outbox in
  the run folder (``tracking/outbox.jsonl``; files to upload are hard-linked snapshots) and a background thread
  delivers the events in order, retrying with backoff while the server or the object store is down.
  Delivery is idempotent (metrics carry their timestamp, child runs are found by tag, a model version by its
  run), so a resumed run that re-sends events logs nothing twice. ``close`` waits for delivery up to
  ``tracking.flush_timeout_s``; what is still undelivered stays in the outbox and ``oat track sync RUN_DIR``
  delivers it later.

Metric names (MLflow allows letters, digits, ``_ - . / :`` and spaces): per epoch (step = epoch, from 1)
``loss``, ``lr``, ``images_per_s``, ``epoch_seconds``, ``data_wait_share``, ``train_clean_acc``,
``train_adv_acc``, and at evaluation epochs ``val/clean_acc/lam_0.1`` (``/w_0.5`` for OATS widths);
``system/…`` from MLflow's system monitors. At the end the test curve, one key per quantity and attack with
step = round(100·λ) (``test/clean_acc``, ``test/robust_acc/apgd``, ``test/robust_acc/pgd20``, ``…/w_0.5``), so
that the experiment's default charts are the trade-off curves of every run; one child run per test point
(params ``method``, ``lambda``, ``width``; metrics ``clean_acc``, ``robust_acc``) keeps each point's numbers.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig
from pipeline.files import atomic_write_text
from pipeline.science.curves import flag_lines, read_flags
from pipeline.training.callbacks import Callback, RunContext, TrainResult
from pipeline.training.checkpoint import is_artifact_uri
from pipeline.training.metrics import curve_metrics, epoch_metrics

OUTBOX = "outbox.jsonl"
DELIVERED = "delivered"
RUN_FILE = "run.json"


class TrackingError(RuntimeError):
    """The tracking server or its artifact store cannot be used (said before any training starts)."""


# ------------------------------------------------------------------------------------------ helpers
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SIGNED = re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s]+")


def redact(text: str) -> str:
    """A URL's ``user:password@`` and presigned-URL signatures replaced by ``***``."""
    return _SIGNED.sub(r"\1***", _USERINFO.sub(r"\g<scheme>***@", text))


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"data.dataset": "digits", "method.lambda_choices": "[0.0, 0.1]"}`` (redacted)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = redact(json.dumps(v) if isinstance(v, (list, tuple)) else str(v))[:6000]
    return out


def curve_tags(points: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The test curve as model-version tags: ``eval_attack``, and ``clean_acc`` / ``robust_acc`` as
    ``λ:value`` lists (``λ@width:value`` for OATS widths below 1), in %."""
    head = headline_points(points)
    if not head:
        return {}

    def cell(k: tuple[float, float]) -> str:
        return f"{k[0]:g}" + ("" if k[1] == 1.0 else f"@{k[1]:g}")

    first = next(iter(head.values()))
    attack = first.get("attack", "pgd")
    return {"eval_attack": f"PGD-{first.get('steps', '')}" if attack == "pgd" else attack,
            "eval_eps": f"{float(first.get('eps', 0.0)):.4g} {first.get('norm', 'linf')}",
            "eval_images": str(first.get("n", "")),
            "clean_acc": ",".join(f"{cell(k)}:{100 * float(p['clean_acc']):.1f}" for k, p in sorted(head.items())),
            "robust_acc": ",".join(f"{cell(k)}:{100 * float(p['robust_acc']):.1f}" for k, p in sorted(head.items()))}


def headline_points(points: Iterable[Mapping[str, Any]]) -> dict[tuple[float, float], dict[str, Any]]:
    """Per (λ, width) the point of the strongest attack there is (AutoAttack before PGD), with every attack's
    robust accuracy under ``by_attack``."""
    from pipeline.science.curves import PREFERENCE

    rank = {a: i for i, a in enumerate(PREFERENCE)}
    out: dict[tuple[float, float], dict[str, Any]] = {}
    for p in points:
        k = (float(p["lambda"]), float(p["width"]))
        attack = p.get("attack", "pgd")
        cur = out.get(k)
        if cur is None or rank.get(attack, 99) < rank.get(cur.get("attack", "pgd"), 99):
            out[k] = {**p, "by_attack": {**(cur or {}).get("by_attack", {})}}
        out[k]["by_attack"][attack] = float(p["robust_acc"])
    return out


NOTE = "mlflow.note.content"  # a run's, an experiment's description in the UI (markdown)
EXPERIMENT_NOTE = """\
**How to read this experiment.** Every training run logs its test curve over λ: `test/clean_acc` and
`test/robust_acc/<attack>` at step = 100·λ (`apgd` is the per-image worst case of APGD-CE and APGD-T, `pgd20`
PGD-20, `autoattack` the standard AutoAttack; OATS adds one key per width, `…/w_0.5`). The chart view therefore
draws OAT, OATS and the sweep of dedicated PGDAT models as lines over λ on the same charts: read the x axis as
100·λ (0 = clean training, 100 = adversarial training only).

* An **OAT/OATS run** is one model that takes λ (and the width) as an input; each of its test points is a child run.
* The **sweep** run holds the dedicated PGDAT models' curve; each model is a child run.
* A **compare** run (`kind = comparison`) has the table of OAT against the dedicated models in its description,
  the differences as `vs_dedicated/delta_*` curves, and `compare.png`.
* The registered model's versions carry a model card (which λ it serves, its test table, the threat model).
"""


def _fit(text: str) -> str:
    from pipeline.platform.registry import NOTE_LIMIT, fit_note

    return fit_note(text, NOTE_LIMIT)


def _pct(x: Any) -> str:
    return f"{100 * float(x):.1f}"


def md_table(header: list[str], rows: Iterable[list[str]]) -> str:
    """A table for a description (markdown): aligned columns in a fenced block. The MLflow UI draws markdown tables
    without any cell padding (columns run together), so the columns are laid out here, two spaces apart, numbers
    right-aligned."""
    body = [list(r) for r in rows]
    cols = list(zip(header, *body))
    width = [max(len(c) for c in col) for col in cols]
    numeric = [all(re.fullmatch(r"[+−-]?[\d.,]+|–", c) for c in col[1:]) for col in cols]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, width, numeric)).rstrip()

    return "\n".join(["```", line(header), line(["─" * w for w in width]), *(line(r) for r in body), "```"])


def points_markdown(points: Iterable[Mapping[str, Any]]) -> str:
    """Test points as a table for a description (:func:`md_table`): λ (and width), clean accuracy, then robust
    accuracy under each attack that ran, the quoted (strongest) one first, in %."""
    from pipeline.science.curves import PREFERENCE, Point, attack_label

    pts = [Point.from_dict(dict(p)) for p in points]
    if not pts:
        return ""
    attacks = sorted({p.attack for p in pts}, key=lambda a: PREFERENCE.index(a) if a in PREFERENCE else 99)
    label = {a: attack_label(next(p for p in pts if p.attack == a)) for a in attacks}
    widths = sorted({p.width for p in pts}, reverse=True)
    cols = ["λ", *(["width"] if widths != [1.0] else []), "clean", *(label[a] for a in attacks)]
    rows = []
    for w in widths:
        for lam in sorted({p.lam for p in pts if p.width == w}):
            at = {p.attack: p for p in pts if p.lam == lam and p.width == w}
            clean = (at.get("pgd") or next(iter(at.values()))).clean_acc
            rows.append([f"{lam:g}", *([f"{w:g}"] if widths != [1.0] else []), _pct(clean),
                         *(_pct(at[a].robust_acc) if a in at else "–" for a in attacks)])
    return md_table(cols, rows)


NORM_NAMES = {"linf": "L∞", "l2": "L2"}


def threat_words(job: JobConfig) -> str:
    """``L∞ ε = 0.2, training attack PGD-10``."""
    a = job.attack
    norm = NORM_NAMES.get(a.norm, a.norm)
    return f"{norm} ε = {a.eps:g}, training attack PGD-{a.steps}"


def threat_model(points: Iterable[Mapping[str, Any]]) -> str:
    """``L∞ ε = 0.2 on images in [0, 1]; test split, 397 images; quoted: APGD-CE + APGD-T``."""
    from pipeline.science.curves import Point, attack_label

    head = headline_points(points)
    if not head:
        return ""
    p = Point.from_dict({k: v for k, v in next(iter(head.values())).items() if k != "by_attack"})
    norm = NORM_NAMES.get(p.norm, p.norm)
    return (f"{norm} ε = {p.eps:.4g} on images in [0, 1]; test split, {p.n} images; robust accuracy quoted under "
            f"{attack_label(p)}")


def run_description(job: JobConfig) -> str:
    """What a training run is, in words, for its description (the UI's overview)."""
    from pipeline.science.methods import get_method

    m, d, threat = job.method, job.data.dataset, threat_words(job)
    lams = ", ".join(f"{x:g}" for x in m.lambda_choices)
    method = get_method(m.name)
    if method.conditioned:
        widths = f" and the width ∈ {{{', '.join(f'{w:g}' for w in job.model.widths or [1.0])}}}" \
            if method.slimmable else ""
        mm = job.model
        norms = (" + dual BN" if mm.batch_norm else " + BN on the λ = 0 route" if mm.clean_bn else "") \
            if mm.use2BN else ""
        what = (f"**{m.name.upper()}** on {d}: one model that takes λ ∈ {{{lams}}}{widths} as an input "
                f"(FiLM{norms}), {threat}, {job.train.epochs} epochs.")
    else:
        what = f"**{m.name.upper()}** on {d}: a dedicated model at λ = {float(m.Lambda):g}, {threat}, " \
               f"{job.train.epochs} epochs."
    return (f"{what}\n\nThe test curve is `test/clean_acc` and `test/robust_acc/<attack>` over step = 100·λ; "
            "each test point is a child run. The job's config is the artifact `config.yaml`.")


def model_card(job: JobConfig, points: Iterable[Mapping[str, Any]], data: Mapping[str, Any] | None = None,
               run_id: str = "", quality: str = "") -> str:
    """A registered version's description: what it serves, its test table under the named attack, the threat
    model, the quality check (``quality``: "passed" or the flags), the data set (fingerprint) and the job."""
    from pipeline.science.methods import get_method

    pts = [dict(p) for p in points]
    m = job.method
    method = get_method(m.name)
    lams = ", ".join(f"{x:g}" for x in job.lambdas)
    serves = f"λ ∈ {{{lams}}}"
    if method.slimmable:
        serves += f" and width ∈ {{{', '.join(f'{w:g}' for w in job.model.widths or [1.0])}}}"
    lines = [f"### {job.name}: {m.name.upper()} on {job.data.dataset}", "",
             f"**Serves** {serves}: pass `lam`" + (" and `width`" if method.slimmable else "")
             + " in `params` at predict time (`mlflow models serve`, `mlflow.pyfunc.load_model`).", ""]
    if pts:
        lines += ["**Test points** (accuracy in %):", "", points_markdown(pts), "",
                  f"**Threat model**: {threat_model(pts)}.", ""]
        if quality:
            lines += [f"**Quality check** (collapse, masked gradients): {quality}.", ""]
    else:
        lines += [f"**Threat model**: {threat_words(job)} (no test points were recorded).", ""]
    lines.append(f"**Training**: {threat_words(job)}, {job.model.backbone or 'reference'} backbone, "
                 f"{job.train.epochs} epochs, batch {job.train.batch_size}, {job.optim.name} lr {job.optim.lr:g}, "
                 f"seed {job.train.seed}.")
    if data:
        counts = data.get("counts", {})
        sizes = " / ".join(f"{counts[k]:,} {k}" for k in ("train", "val", "test") if k in counts)
        lines += ["", f"**Data**: {data.get('name', job.data.dataset)} (fingerprint `{data.get('digest', '')}`"
                  + (f"; {data['origin']}" if data.get("origin") else "") + (f"), {sizes}." if sizes else ").")]
    lines += ["", f"**Job**: `{job.name}`" + (f", run `{run_id}`" if run_id else "")
              + "; its resolved config is the run's artifact `config.yaml`."]
    return "\n".join(lines)


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit of the code that runs (``OAT_GIT_COMMIT`` where there is no .git, as in a Ray job)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("OAT_GIT_COMMIT") or None


def resolve_uri(uri: str | None) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else a local store (``sqlite:///mlflow.db`` here)."""
    from pipeline.config import tracking_uri_problem

    if uri:
        if why := tracking_uri_problem(uri):  # the file store: refused by MLflow 3 unless MLFLOW_ALLOW_FILE_STORE
            raise TrackingError(f"tracking.uri: {why}")
    elif env := os.environ.get("MLFLOW_TRACKING_URI"):
        if why := tracking_uri_problem(env):
            raise TrackingError(f"MLFLOW_TRACKING_URI: {why}")
        uri = env
    if not uri:
        uri = "sqlite:///mlflow.db"
        if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:  # a submitted job's working dir is temporary
            print("[tracking] warning: no tracking.uri and no MLFLOW_TRACKING_URI: tracking into mlflow.db in the "
                  "job's temporary working dir; set MLFLOW_TRACKING_URI to the cluster's MLflow server",
                  file=sys.stderr, flush=True)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())  # the same file from any cwd
    return uri


def _quiet_client_env() -> None:
    """Fail fast, and let our own loop retry: MLflow's client otherwise retries each request for minutes."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from pipeline.timeouts import timeout_s

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", f"{max(1, round(timeout_s('mlflow')))}")
    # our own progress lines say where the run is; MLflow would print a URL per run it ends
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    for name in ("alembic", "mlflow.store.db.utils"):  # a local SQLite store logs its schema checks at INFO
        logging.getLogger(name).setLevel(logging.WARNING)


def mlflow_client(uri: str) -> Any:
    _quiet_client_env()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def transient(exc: BaseException) -> bool:
    """Worth retrying: the server or its store is down or failing (5xx), not a request it refuses (4xx)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        try:
            return int(exc.get_http_status_code()) >= 500
        except Exception:  # noqa: BLE001
            return True
    return True  # connection errors, timeouts, OSError


def error_reason(exc: BaseException) -> str:
    msg = redact(str(exc)).strip().splitlines()
    text = msg[0] if msg else type(exc).__name__
    for marker in ("Max retries exceeded", "Connection refused", "Failed to establish", "timed out"):
        if marker in str(exc):
            return f"not reachable ({marker.lower()})"
    return text[:400]


# ------------------------------------------------------------------------------------------ begin
@dataclass
class RunInfo:
    uri: str
    experiment_id: str
    run_id: str
    run_name: str
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunInfo:
        return cls(**{k: d[k] for k in ("uri", "experiment_id", "run_id", "run_name", "resumed")})


def run_key(job: JobConfig, where: str) -> str:
    return hashlib.sha256(f"{job.name}\0{where}".encode()).hexdigest()[:24]


def begin(job: JobConfig, *, where: str, run_name: str | None = None, fresh: bool = False,
          source: str = "oat train", tags: Mapping[str, str] | None = None) -> RunInfo:
    """Find or create this job's MLflow run and prove the server and its artifact store take writes.

    ``where`` names the job's state (its run folder, or Ray's storage/name): the same job in the same place
    continues the same run; ``fresh`` starts a new one."""
    t = job.tracking
    uri = resolve_uri(t.uri)
    shown = redact(uri)
    client = mlflow_client(uri)
    try:
        exp, exp_id = _experiment(client, t.experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment '{t.experiment}' at {shown} is deleted: restore it in the UI "
                                f"or set tracking.experiment to another name")
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001 - every way of not reaching the server
        raise TrackingError(f"MLflow tracking server {shown}: {error_reason(exc)}. Start it (oat stack up), or set "
                            f"tracking.uri / MLFLOW_TRACKING_URI, or tracking.enabled=false") from None
    key = run_key(job, where)
    name = run_name or job.name
    try:
        found = [] if fresh else client.search_runs([exp_id], f"tags.oat_run_key = '{key}'", max_results=1,
                                                    order_by=["attributes.start_time DESC"])
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run_tags = {"oat_run_key": key, "oat_run_where": redact(where), "method": job.method.name,
                    "backbone": str(job.model.backbone), "dataset": job.data.dataset, "mlflow.user": getpass.getuser(),
                    "mlflow.source.name": source, "mlflow.source.type": "JOB"}
            commit = git_commit()
            if commit:
                run_tags.update({"git_commit": commit, "mlflow.source.git.commit": commit})
            run_tags[NOTE] = run_description(job)
            run_tags.update(tags or {})  # e.g. mlflow.parentRunId: a sweep's trial under the sweep's run
            run_id = client.create_run(exp_id, run_name=name, tags=run_tags).info.run_id
        _log_params(client, run_id, flatten(job.to_dict()))
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"MLflow tracking server {shown} refused the run: {error_reason(exc)}") from None
    text = job.to_yaml()
    try:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="oat-track-") as tmp:
            (Path(tmp) / "config.yaml").write_text(text)
            client.log_artifact(run_id, str(Path(tmp) / "config.yaml"))
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"the artifact store behind MLflow {shown} refused an upload: {error_reason(exc)} "
                            f"(with proxied artifacts the server's S3 endpoint and keys are at fault)") from None
    return RunInfo(uri, exp_id, run_id, name, resumed=bool(found))


def _log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    """Params once: a resumed run with a changed value (say train.epochs) keeps the first value and tags the
    new one, since MLflow refuses to change a param."""
    from mlflow.entities import Param, RunTag

    have = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in params.items() if k not in have]
    changed = [RunTag(f"resumed_with.{k}", v) for k, v in params.items() if k in have and have[k] != v]
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i:i + 100])
    if changed:
        client.log_batch(run_id, tags=changed)


# ------------------------------------------------------------------------------------------ the tracker
class Tracker:
    """Rank 0's tracking: calls append to the outbox and return at once; a thread delivers."""

    def __init__(self, info: RunInfo, folder: str | Path, *, system_metrics: bool = False, interval: float = 10.0,
                 start: bool = True):
        self.info = info
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "pending").mkdir(exist_ok=True)
        atomic_write_text(json.dumps(info.to_dict(), indent=1) + "\n", self.folder / RUN_FILE)
        self._lock = threading.Condition()
        self._events: list[dict[str, Any]] = []
        self._delivered = 0
        self._load()
        self._stop = threading.Event()
        self._closing = False
        self.last_error: str | None = None
        self.failures = 0
        self.client: Any = None
        self._thread = threading.Thread(target=self._run, name="oat-tracking", daemon=True)
        self._sys: threading.Thread | None = None
        if start:
            self._thread.start()
            if system_metrics:
                self._sys = threading.Thread(target=self._system_metrics, args=(interval,), name="oat-sysmetrics",
                                             daemon=True)
                self._sys.start()

    # -- the outbox
    def _load(self) -> None:
        box = self.folder / OUTBOX
        if box.is_file():
            for line in box.read_text().splitlines():
                if line.strip():
                    try:
                        self._events.append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut by a crash: the event was never acknowledged
                        break
        try:
            self._delivered = min(int((self.folder / DELIVERED).read_text()), len(self._events))
        except (OSError, ValueError):
            self._delivered = 0

    def _put(self, event: dict[str, Any]) -> None:
        with self._lock:
            event["seq"] = len(self._events)
            with open(self.folder / OUTBOX, "a") as f:
                f.write(json.dumps(event) + "\n")
            self._events.append(event)
            self._lock.notify_all()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._events) - self._delivered

    # -- what the loop calls
    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        """``epoch``: the training epoch these metrics close (named in the outbox, see :meth:`epochs_logged`)."""
        if metrics:
            self._put({"t": "metrics", "m": {k: float(v) for k, v in metrics.items()}, "step": int(step),
                       **({"epoch": int(epoch)} if epoch is not None else {}), "ts": int(time.time() * 1000)})

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        epoch = int(record.get("epoch", 0))
        self.log_metrics(epoch_metrics(record), epoch + 1, epoch)

    def epochs_logged(self) -> set[int]:
        """The epochs whose metrics are in the outbox (delivered or not)."""
        with self._lock:  # an outbox written before events named their epoch: the step of an epoch's "loss"
            return {int(e["epoch"]) if "epoch" in e else int(e["step"]) - 1 for e in self._events
                    if e.get("t") == "metrics" and ("epoch" in e or "loss" in e.get("m", {}))}

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload ``path`` (a file or a folder) as it is now: files are hard-linked into the outbox."""
        src = Path(path)
        snap = self.folder / "pending" / f"{len(self._events):06d}" / src.name
        snap.parent.mkdir(parents=True, exist_ok=True)
        _snapshot(src, snap)
        self._put({"t": "artifact", "file": str(snap.relative_to(self.folder)), "dir": artifact_path})

    def log_curve(self, points: Iterable[Mapping[str, Any]], split: str = "test") -> None:
        """Points as curves over λ (``test/clean_acc``, ``test/robust_acc/apgd``, … at step round(100·λ)): the
        UI's default charts are then the trade-off curves."""
        for step, metrics in sorted(curve_metrics(points, split).items()):
            self.log_metrics(metrics, step)

    def log_points(self, points: Iterable[Mapping[str, Any]], split: str) -> None:
        """Test-split points: the curves over λ on this run and one child run per point (with the per-point
        metrics)."""
        pts = [dict(p) for p in points]
        self.log_curve(pts, split)
        self._put({"t": "points", "points": pts, "split": split, "ts": int(time.time() * 1000)})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tags (a description, ``mlflow.note.content``, is cut at a line to fit MLflow's limit)."""
        from pipeline.platform.registry import NOTE_LIMIT, fit_note

        self._put({"t": "tags", "tags": {k: fit_note(str(v), NOTE_LIMIT) if k == NOTE else str(v)[:5000]
                                         for k, v in tags.items()}})

    def log_dataset(self, data: Mapping[str, Any], context: str = "training") -> None:
        """The run's data set as an MLflow input (``DataSource.as_input``: name, fingerprint as digest, origin,
        split sizes): the UI's *Dataset* column and the lineage name it."""
        if data:
            self._put({"t": "input", "data": dict(data), "context": context})

    def register(self, checkpoint: str | Path, name: str, alias: str | None,
                 points: Iterable[Mapping[str, Any]] = (), card: str = "") -> None:
        """Register the checkpoint; the version's tags quote the test curve of ``points`` (AutoAttack's where
        it ran, else PGD's) and ``card`` is its description (:func:`model_card`)."""
        snap = self.folder / "pending" / f"{len(self._events):06d}" / "model.pt"
        snap.parent.mkdir(parents=True, exist_ok=True)
        _snapshot(Path(checkpoint), snap)
        self._put({"t": "register", "file": str(snap.relative_to(self.folder)), "name": name, "alias": alias,
                   "curve": curve_tags(points), "card": card})

    def close(self, status: str = "FINISHED", timeout: float = 120.0) -> int:
        """End the run; wait up to ``timeout`` s for delivery. Returns how many events are still pending."""
        self._put({"t": "end", "status": status})
        self._closing = True
        deadline = time.monotonic() + timeout
        with self._lock:
            self._lock.notify_all()
            while self._delivered < len(self._events) and time.monotonic() < deadline:
                self._lock.wait(timeout=0.5)
            left = len(self._events) - self._delivered
        self._halt()
        return left

    def _halt(self) -> None:
        """Stop the delivery thread (what is undelivered stays in the outbox)."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(timeout=30)

    # -- delivery
    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._lock:
                while self._delivered >= len(self._events) and not self._stop.is_set():
                    self._lock.wait(timeout=1.0)
                if self._delivered >= len(self._events) or (self._stop.is_set() and self.failures):
                    return
                event = self._events[self._delivered]
            try:
                self._deliver(event)
            except Exception as exc:  # noqa: BLE001
                self.last_error = error_reason(exc)
                if transient(exc):
                    self.failures += 1
                    if self._stop.is_set():
                        return
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                print(f"[tracking] MLflow refused a {event['t']} event, skipped: {self.last_error}",
                      file=sys.stderr, flush=True)
            backoff = 0.5
            self.failures = 0
            with self._lock:
                self._delivered += 1
                atomic_write_text(f"{self._delivered}\n", self.folder / DELIVERED)
                self._lock.notify_all()
            if event["t"] in ("artifact", "register"):
                shutil.rmtree(self.folder / Path(event["file"]).parent, ignore_errors=True)

    def _deliver(self, e: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        if self.client is None:
            self.client = mlflow_client(self.info.uri)
        c, run_id = self.client, self.info.run_id
        kind = e["t"]
        if kind == "metrics":
            ms = [Metric(k, v, e["ts"], e["step"]) for k, v in e["m"].items()]
            for i in range(0, len(ms), 500):
                c.log_batch(run_id, metrics=ms[i:i + 500])
        elif kind == "artifact":
            path = self.folder / e["file"]
            if path.is_dir():
                c.log_artifacts(run_id, str(path), f"{e['dir']}/{path.name}" if e["dir"] else path.name)
            elif path.is_file():
                c.log_artifact(run_id, str(path), e["dir"])
        elif kind == "points":
            self._child_runs(e["points"], e["split"], e["ts"])
        elif kind == "tags":
            from mlflow.entities import RunTag

            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in e["tags"].items()])
        elif kind == "register":
            path = self.folder / e["file"]
            if path.is_file():
                from pipeline.platform.registry import register_model

                register_model(self.info, path, e["name"], e["alias"], e.get("curve"), e.get("card", ""))
        elif kind == "input":
            c.log_inputs(run_id, [dataset_input(e["data"], e["context"])])
        elif kind == "end":
            c.set_terminated(run_id, e["status"])

    def _child_runs(self, points: list[dict[str, Any]], split: str, ts: int) -> None:
        """One child run per point, found again by its tag: re-delivering the event logs nothing twice."""
        from mlflow.entities import Metric, Param

        c, info = self.client, self.info
        for p in headline_points(points).values():
            key = f"{info.run_id}:{split}:{p['lambda']:g}:{p['width']:g}"
            found = c.search_runs([info.experiment_id], f"tags.oat_point = '{key}'", max_results=1)
            method = str(p.get("method", "")).upper()
            if found:
                rid = found[0].info.run_id
            else:
                name = f"{info.run_name} · {method} λ={p['lambda']:g}" + (
                    "" if p["width"] == 1.0 else f" w={p['width']:g}")
                rid = c.create_run(info.experiment_id, run_name=name, tags={
                    "mlflow.parentRunId": info.run_id, "oat_point": key, "method": method, "split": split}).info.run_id
            attack = p.get("attack", "pgd")
            c.log_batch(rid, params=[Param("method", method), Param("lambda", f"{p['lambda']:g}"),
                                     Param("width", f"{p['width']:g}"),
                                     Param("attack", f"pgd-{p.get('steps', '')}" if attack == "pgd" else attack)],
                        metrics=[Metric("clean_acc", float(p["clean_acc"]), ts, 0),
                                 Metric("robust_acc", float(p["robust_acc"]), ts, 0)]
                        + [Metric(f"robust_acc_{a}", v, ts, 0) for a, v in p["by_attack"].items()
                           if len(p["by_attack"]) > 1])
            c.set_terminated(rid, "FINISHED")

    def _system_metrics(self, interval: float) -> None:
        """MLflow's CPU / memory / disk / network (and GPU) monitors, sampled into the outbox, so that an
        outage loses none of them (MLflow's own monitor thread gives up on the first failed request)."""
        try:
            from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
            from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
            from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

            monitors: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
            try:
                from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

                monitors.append(GPUMonitor())
            except Exception:  # noqa: BLE001 - no NVIDIA library: no GPU metrics
                pass
        except Exception as exc:  # noqa: BLE001
            print(f"[tracking] system metrics unavailable: {exc}", file=sys.stderr)
            return
        step = 0
        while not self._stop.wait(interval) and not self._closing:
            metrics: dict[str, float] = {}
            for m in monitors:
                try:
                    m.collect_metrics()
                    metrics.update(m.aggregate_metrics())
                    m.clear_metrics()
                except Exception:  # noqa: BLE001 - one monitor failing does not stop the others
                    continue
            self.log_metrics({f"system/{k}": v for k, v in metrics.items()}, step)
            step += 1


def dataset_input(data: Mapping[str, Any], context: str) -> Any:
    """An MLflow ``DatasetInput`` from ``DataSource.as_input``: its name, its fingerprint as the digest, its origin
    as the source, the split sizes and image shape as the profile."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = {"num_rows": sum(int(v) for v in data.get("counts", {}).values()), **data.get("counts", {}),
               "image_shape": data.get("image_shape"), "num_classes": data.get("num_classes"),
               "split": data.get("split", "")}
    source = {"origin": data.get("origin", ""), "uri": redact(str(data.get("where", "")))}
    ds = Dataset(name=str(data["name"]), digest=str(data.get("digest") or "unknown"), source_type="local",
                 source=json.dumps(source), profile=json.dumps(profile))
    return DatasetInput(ds, [InputTag("mlflow.data.context", context)])


def _snapshot(src: Path, dst: Path) -> None:
    """Hard links (our files are replaced, never rewritten in place, so a link is a snapshot); copies across
    file systems."""
    if src.is_dir():
        for f in src.rglob("*"):
            if f.is_file() and not f.name.startswith("."):
                _snapshot(f, dst / f.relative_to(src))
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def sync(folder: str | Path, timeout: float = 600.0) -> int:
    """Deliver what a run's outbox still holds (``oat track sync RUN_DIR``); returns what is left."""
    folder = Path(folder)
    if (folder / "tracking" / RUN_FILE).is_file():
        folder = folder / "tracking"
    try:
        info = RunInfo.from_dict(json.loads((folder / RUN_FILE).read_text()))
    except (OSError, ValueError, KeyError):
        raise TrackingError(f"{folder} holds no tracked run (no tracking/{RUN_FILE})") from None
    t = Tracker(info, folder, start=False)
    if t.pending == 0:
        return 0
    t._thread.start()
    deadline = time.monotonic() + timeout
    while t.pending and time.monotonic() < deadline:
        time.sleep(0.5)
    t._halt()
    return t.pending


# ------------------------------------------------------------------------------------------ the loop's side
def start_tracker(job: JobConfig, out: Path, *, info: RunInfo | None, resume: bool) -> Tracker | None:
    """Rank 0's tracker for a run folder (``None`` with tracking off). Without ``info`` (``oat train``) this
    is where :func:`begin` runs: before any data is read or any step taken."""
    if not job.tracking.enabled:
        return None
    if info is None:
        info = begin(job, where=str(out.resolve()), fresh=not resume)
        state = "continues" if info.resumed else "new"
        print(f"[tracking] MLflow run '{info.run_name}' ({state}, id {info.run_id[:12]}) in experiment "
              f"'{job.tracking.experiment}' at {redact(info.uri)}", flush=True)
    folder = out / "tracking"
    try:
        old = json.loads((folder / RUN_FILE).read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        old = None
    if old is not None and (old != info.run_id or not resume):  # another run's outbox: keep it aside
        folder.rename(out / f"tracking.{old[:12]}.{int(time.time())}")
    return Tracker(info, folder, system_metrics=job.tracking.system_metrics,
                   interval=job.tracking.system_metrics_interval)


def write_encoding(model: Any, path: Path) -> Path:
    """The λ encoding (the FiLM input per trained λ) as JSON, for the run's artifacts."""
    spec = model.spec
    doc = {"encoding": spec.encoding if spec.film else None, "dim": spec.dim, "seed": spec.encoding_seed,
           "lambdas": list(model.lambdas), "widths": list(model.widths),
           "matrix": model.encoding_matrix.detach().cpu().tolist()}
    atomic_write_text(json.dumps(doc) + "\n", path)
    return path


def finish_tracking(tracker: Tracker, job: JobConfig, out: Path, points: list[Any],
                    data: Mapping[str, Any] | None = None) -> None:
    """The run's artifacts (checkpoints final and best per λ, history, test curve and figure), the test curve
    over λ and one child run per test point, the description with the test table, the registered model and its
    model card; then wait for delivery."""
    for name, where in (("final.pt", "checkpoints"), ("best", "checkpoints"), ("history.json", None),
                        ("eval.json", None), ("tradeoff.png", None)):
        if (out / name).exists():
            tracker.log_artifact(out / name, where)
    if points:
        tracker.log_points([p.to_dict() for p in points], "test")
    flags = read_flags(out / "eval.json") if (out / "eval.json").is_file() else []
    quality = "FLAGGED: " + " | ".join(flag_lines(flags)) if flags else "passed"
    if points:
        dicts = [p.to_dict() for p in points]
        tracker.set_tags({"quality": quality,
                          NOTE: (f"{run_description(job)}\n\n**Test points** (accuracy in %; "
                                 f"{threat_model(dicts)}):\n\n{points_markdown(dicts)}")})
    t = job.tracking
    if t.register and (out / "final.pt").is_file():
        if flags and not t.register_flagged:
            print(f"[tracking] not registered as '{t.model_name or job.name}': {len(flags)} trained point(s) "
                  "flagged (collapsed or masked gradients; tag 'quality')", file=sys.stderr, flush=True)
        else:
            tracker.register(out / "final.pt", str(t.model_name or job.name), t.alias, [p.to_dict() for p in points],
                             model_card(job, [p.to_dict() for p in points], data, tracker.info.run_id, quality))
    t0 = time.monotonic()
    left = tracker.close("FINISHED", timeout=t.flush_timeout_s)
    if left:
        print(f"[tracking] MLflow unreachable ({tracker.last_error}): {left} events are kept in {out / 'tracking'}; "
              f"`oat track sync {out}` delivers them", file=sys.stderr, flush=True)
    elif time.monotonic() - t0 > 2:
        print(f"[tracking] delivered the artifacts of '{tracker.info.run_name}' in {time.monotonic() - t0:.0f} s",
              flush=True)


class MlflowCallback(Callback):
    """MLflow tracking as the training loop's callback (rank 0): the run is begun (or continued) when this is
    made, before any training; every epoch's metrics, then the artifacts, test points and registered model at
    the end go through the :class:`Tracker`'s outbox."""

    def __init__(self, job: JobConfig, out: Path, *, info: RunInfo | None = None, resume: bool = True):
        tracker = start_tracker(job, out, info=info, resume=resume)  # an unreachable server: nothing written yet
        out.mkdir(parents=True, exist_ok=True)
        assert tracker is not None, "MlflowCallback needs tracking.enabled"
        self.tracker = tracker
        self.data: dict[str, Any] = {}

    def on_start(self, run: RunContext) -> None:
        self.data = dict(run.data)
        self.tracker.log_dataset(self.data)  # MLflow keeps one input per data set and digest: a resume adds none
        if not (run.out / "encoding.json").is_file():
            self.tracker.log_artifact(write_encoding(run.model, run.out / "encoding.json"))
        # resumed after a crash between latest.pt and the epoch's metrics: log what the outbox never got
        logged = self.tracker.epochs_logged()
        for record in run.history:
            epoch = int(record.get("epoch", -1))
            if epoch < run.start_epoch and epoch not in logged:
                self.tracker.log_epoch(record)

    def on_epoch_end(self, run: RunContext, record: dict[str, Any], last: bool) -> None:
        self.tracker.log_epoch(record)

    def on_end(self, run: RunContext, result: TrainResult) -> None:
        finish_tracking(self.tracker, run.job, run.out, result.test_points, self.data)

    def on_error(self, exc: BaseException) -> None:
        self.tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", timeout=10)


def tracking_callbacks(job: JobConfig, out: str | Path, *, info: RunInfo | None = None, resume: bool = True,
                       rank: int = 0) -> list[Callback]:
    """The loop's callbacks for MLflow: one on rank 0 when ``tracking.enabled``, none otherwise. Without
    ``info`` (``oat train``) the MLflow run is begun here."""
    if rank != 0 or not job.tracking.enabled:
        return []
    return [MlflowCallback(job, Path(out), info=info, resume=resume)]


def _experiment(client: Any, name: str) -> tuple[Any, str]:
    """The experiment ``name`` (None if it was just created) and its id, created when missing; an experiment
    without a description gets :data:`EXPERIMENT_NOTE` (how to read its charts)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        exp_id = client.create_experiment(name, tags={NOTE: EXPERIMENT_NOTE})
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "active" and not exp.tags.get(NOTE):
            # best effort: a user who may log runs but not edit the experiment still trains
            with contextlib.suppress(Exception):
                client.set_experiment_tag(exp_id, NOTE, EXPERIMENT_NOTE)
    return exp, exp_id


def fetch_init(job: JobConfig, out: str | Path) -> Path | None:
    """``train.init_from`` as a local file: a path as it is, an MLflow artifact URI (``runs:/RUN/checkpoints/
    final.pt``, ``models:/…``, ``s3://…``) fetched into ``out/init`` by this process (so a warm start works on
    any node)."""
    src = job.train.init_from
    if not src:
        return None
    if not is_artifact_uri(src):
        return Path(src)
    import mlflow

    dest = Path(out) / "init"
    dest.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=src, dst_path=str(dest),
                                                    tracking_uri=resolve_uri(job.tracking.uri)))


def log_result(uri: str | None, experiment: str, *, what: str, run_name: str | None = None, run_id: str | None = None,
               tags: dict[str, str] | None = None, params: dict[str, str] | None = None,
               metrics: dict[str, float] | None = None, run_tags: dict[str, str] | None = None,
               artifacts: Iterable[Path] = (), artifact_path: str | None = None,
               curves: Mapping[int, Mapping[str, float]] | None = None,
               note: Callable[[str], str] | None = None, replaces: str | None = None) -> str:
    """A result (a comparison, a report) as an MLflow run: into ``run_id`` when given, else a new finished run
    ``run_name`` in ``experiment``. ``curves``: metrics by step (curves over λ, step = round(100·λ)); ``note``:
    the run's description, from its run id; ``replaces``: a key (tag ``oat_result_key``) whose earlier runs are
    deleted once the new one is logged (a rerun of the same comparison leaves one run). Any failure is one
    :class:`TrackingError` naming ``what``. Returns the run id."""
    from mlflow.entities import Metric, Param, RunTag

    uri = resolve_uri(uri)
    c = mlflow_client(uri)
    try:
        rid = run_id
        if rid is None:
            exp_id = _experiment(c, experiment)[1]
            old = c.search_runs([exp_id], f"tags.oat_result_key = '{replaces}'") if replaces else []
            keyed = {**(tags or {}), **({"oat_result_key": replaces} if replaces else {})}
            rid = c.create_run(exp_id, run_name=run_name, tags=keyed).info.run_id
        ts = int(time.time() * 1000)
        c.log_batch(rid, metrics=[Metric(k, float(v), ts, 0) for k, v in (metrics or {}).items()]
                    + [Metric(k, float(v), ts, step) for step, ms in (curves or {}).items() for k, v in ms.items()],
                    params=[Param(k, str(v)) for k, v in (params or {}).items()],
                    tags=[RunTag(k, str(v)) for k, v in {**(run_tags or {}),
                                                           **({NOTE: _fit(note(rid))} if note else {})}.items()])
        for f in artifacts:
            c.log_artifact(rid, str(f), artifact_path)
        if run_id is None:
            c.set_terminated(rid, "FINISHED")
            for r in old:
                c.delete_run(r.info.run_id)
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"MLflow {redact(uri)}: could not log {what}: {error_reason(exc)}") from None
    return str(rid)
