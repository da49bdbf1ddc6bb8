"""Generated bad input for ``oat`` and for the served model (hypothesis), and the invariants each case must meet.

Every generated case is invalid by construction:

* **job files**: a valid job (:data:`BASE_JOB`) with one field broken, chosen from the job's JSON Schema
  (:func:`pipeline.config.job_schema`): a value of the wrong type, one outside the field's bounds (read from the
  schema), a name outside an enum, an empty list where one value is required, a repeated λ, an unknown key, a key
  in the wrong section, a section that is not a mapping, an ε outside the images' range, a URI of a scheme the key
  does not take; or a file that is not YAML, not a mapping, not text, or missing. Given as the job file or as
  ``--set``, to each subcommand that reads a job.
* **options**: each typed option of every subcommand with a value of the wrong type, NaN/inf, out of range,
  empty, unicode; a choice outside its choices.
* **paths and URIs**: a file where a folder is expected and the reverse, a missing checkpoint or job, a file that
  is not a checkpoint; an MLflow URI of an unknown scheme; a Ray address or MLflow server where nothing listens.

Invariants of a refused invocation (:func:`check_refusal`): exit code 2; stderr holds ``oat: error:`` (or
argparse's usage error) naming the offending key, option or path; no traceback; nothing created or changed in the
sandbox (the output paths and the working dir); no training and no Ray started (tripwires on ``fit`` and
``ray.init``, :func:`tripwires`: the refusal must come before them).

* **REST requests** to the served model, through MLflow's own scoring code (``scoring_server.invocations``, what
  ``mlflow models serve`` runs per request, with its exception-to-status mapping): wrong shapes and dtypes, NaN,
  infinite and out-of-range pixels, missing, untrained, NaN or non-numeric λ and width, empty and oversized batches,
  malformed JSON. Invariant: HTTP 400 with a message, never 200 or 500, and the next good request gets 200 with
  probabilities.

``tests/test_fuzz.py`` runs a fast profile in the unit tier; ``python -m benchmarks.fuzz`` the deep one.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import strategies as st

# a valid, tiny job: every generated job case breaks exactly one thing in it
BASE_JOB: dict[str, Any] = {
    "name": "fuzz",
    "data": {"dataset": "digits", "loader": "memory"},
    "model": {"backbone": "small_cnn", "channels": [8, 16, 16], "dim": 8},
    "method": {"name": "oat", "lambda_choices": [0.0, 0.2, 1.0]},
    "attack": {"eps": 0.2, "steps": 2},
    "optim": {"lr": 0.05},
    "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "max_steps_per_epoch": 1},
    "eval": {"batch_size": 50, "every": 1, "max_images": 20, "test_steps": 2},
}
JOB_COMMANDS = ("train", "run", "sweep", "retrain", "submit", "schedule")

TEXTS = st.sampled_from(["", " ", "abc", "λ", "0x10", "1e999", "nan", "-inf", "∞", "1,5", "[1", "{a: 1}", "\u200b",
                         "ten", "None", "True"])


# ------------------------------------------------------------------------------------------ the schema
def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema["$defs"][ref.rsplit("/", 1)[1]] if ref else node


def _variants(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return list(prop.get("anyOf", [prop]))


def _types(prop: dict[str, Any]) -> set[str]:
    return {v.get("type", "enum" if "enum" in v else "?") for v in _variants(prop)}


def schema_fields() -> list[tuple[str, dict[str, Any]]]:
    """Every (dotted key, JSON Schema) of a job's fields, sections expanded."""
    from pipeline.config import job_schema

    schema = job_schema()
    out: list[tuple[str, dict[str, Any]]] = []
    for name, prop in schema["properties"].items():
        node = _resolve(schema, prop)
        if node.get("type") == "object" and "properties" in node:
            out += [(f"{name}.{k}", v) for k, v in node["properties"].items()]
        else:
            out.append((name, prop))
    return out


def section_keys() -> dict[str, list[str]]:
    from pipeline.config import job_schema

    schema = job_schema()
    return {name: list(_resolve(schema, prop).get("properties", {})) for name, prop in schema["properties"].items()}


# ----------------------------------------------------------------------------------------- the cases
@dataclass
class Case:
    """One generated invocation: argv (``{job}``, ``{sandbox}`` filled in at run time), the job file's text (None:
    no file written), the names stderr must mention (any one of them), and what kind of break it is."""

    kind: str
    argv: list[str]
    names: list[str]
    job_text: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def _bounds(prop: dict[str, Any]) -> dict[str, float]:
    for v in _variants(prop):
        found = {k: v[k] for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum") if k in v}
        if found:
            return found
    return {}


def _wrong_values(prop: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a type the field does not take (never one it takes)."""
    kinds = _types(prop)
    pool: list[Any] = []
    if not kinds & {"string"}:
        pool += ["abc", "λ", "", "1,5", "ten"]
    if not kinds & {"number", "integer"}:
        pool += [1.5, -3, 7]
    elif "number" not in kinds:  # integer only
        pool += [1.5, 0.25]
    if "boolean" not in kinds:
        pool += [True, False] if kinds & {"number", "integer", "string", "array", "enum"} else []
    if "array" not in kinds:
        pool += [[1], [], ["x"]]
    if "object" not in kinds:
        pool += [{"a": 1}]
    if kinds & {"number", "integer"}:
        pool += [math.nan, math.inf, -math.inf] if "string" not in kinds or "number" in kinds else []
    if "enum" in kinds or any("enum" in v for v in _variants(prop)):
        pool += ["not-a-choice", "RAND", "λ"]
    if "null" not in kinds:
        pool += [None] if kinds & {"array", "number", "integer", "boolean"} else []
    # a string pattern of Number takes "8/255"; plain strings that are no number are still wrong for it
    return st.sampled_from([v for v in pool if _takes(prop, v) is False])


def _takes(prop: dict[str, Any], value: Any) -> bool:
    """Whether the field's schema takes ``value`` (a conservative reading: True when unsure)."""
    import re

    for v in _variants(prop):
        t = v.get("type")
        if "enum" in v:
            if value in v["enum"]:
                return True
            continue
        if t == "null" and value is None:
            return True
        if t == "boolean" and isinstance(value, bool):
            return True
        if t == "integer" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t == "number" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return True
        if t == "string" and isinstance(value, str) and ("pattern" not in v or re.search(v["pattern"], value)):
            return True
        if t == "array" and isinstance(value, list):
            return True
        if t == "object" and isinstance(value, dict):
            return True
    return False


def _out_of_bounds(prop: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    b = _bounds(prop)
    options: list[st.SearchStrategy[Any]] = []
    if "minimum" in b:
        lo = b["minimum"]
        options.append(st.integers(-10**6, int(lo) - 1) if integer else
                       st.floats(-1e6, lo, exclude_max=True, allow_nan=False))
    if "exclusiveMinimum" in b:
        lo = b["exclusiveMinimum"]
        options.append(st.integers(-10**6, int(lo)) if integer else st.floats(-1e6, lo, allow_nan=False))
    if "maximum" in b:
        hi = b["maximum"]
        options.append(st.integers(int(hi) + 1, 10**6) if integer else
                       st.floats(hi, 1e6, exclude_min=True, allow_nan=False))
    if "exclusiveMaximum" in b:
        hi = b["exclusiveMaximum"]
        options.append(st.integers(int(hi), 10**6) if integer else st.floats(hi, 1e6, allow_nan=False))
    return st.one_of(options)


def _scalar_prop(prop: dict[str, Any]) -> dict[str, Any]:
    """A list field's item schema (or the field itself)."""
    for v in _variants(prop):
        if v.get("type") == "array":
            return v["items"]
    return prop


@st.composite
def broken_jobs(draw: st.DrawFn) -> tuple[str, dict[str, Any] | str, list[str]]:
    """(kind, the job as a mapping or as raw text, the names an error must mention)."""
    fields = schema_fields()
    sections = section_keys()
    job = json.loads(json.dumps(BASE_JOB))
    kinds = ["type", "bounds", "enum", "empty", "unknown", "nesting", "not-a-section", "duplicate", "eps", "uri",
             "yaml", "not-a-mapping"]
    kind = draw(st.sampled_from(kinds))
    if kind in ("type", "bounds", "enum", "empty"):
        if kind == "type":
            candidates = [(k, p) for k, p in fields if "." in k]
        elif kind == "bounds":
            candidates = [(k, p) for k, p in fields if _bounds(_scalar_prop(p))]
        elif kind == "enum":
            candidates = [(k, p) for k, p in fields if any("enum" in v for v in _variants(p))]
        else:
            candidates = [(k, p) for k, p in fields if any(v.get("minItems") for v in _variants(p))]
        key, prop = draw(st.sampled_from(sorted(candidates, key=lambda kp: kp[0])))
        section, name = key.split(".", 1)
        if kind == "type":
            value: Any = draw(_wrong_values(prop))
        elif kind == "bounds":
            item = _scalar_prop(prop)
            integer = "integer" in _types(item)
            value = draw(_out_of_bounds(item, integer))
            if item is not prop:  # a list: one bad item among good ones
                value = [value]
        elif kind == "enum":
            allowed = next(v["enum"] for v in _variants(prop) if "enum" in v)
            value = draw(st.text(min_size=1, max_size=12).filter(lambda t: t not in allowed))
            if any(v.get("type") == "array" for v in _variants(prop)):
                value = [value]
        else:
            value = []
        job.setdefault(section, {})[name] = value
        return kind, job, [key]
    if kind == "unknown":
        section = draw(st.sampled_from(["", *sorted(s for s, keys in sections.items() if keys)]))
        known = set(sections.get(section, [])) if section else set(sections)
        name = draw(st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True).filter(lambda n: n not in known))
        if section:
            job.setdefault(section, {})[name] = 1
            return kind, job, [f"{section}.{name}"]
        job[name] = 1
        return kind, job, [name]
    if kind == "nesting":  # a field of one section in another one, or at the top
        src = draw(st.sampled_from(sorted(s for s, keys in sections.items() if keys)))
        name = draw(st.sampled_from(sections[src]))
        dst = draw(st.sampled_from(["", *sorted(s for s in sections if s != src and sections[s])]))
        if dst and name in sections[dst]:
            dst = ""
        if not dst and name in sections:
            name = f"{name}_x"
        if dst:
            job.setdefault(dst, {})[name] = 1
            return kind, job, [f"{dst}.{name}"]
        job[name] = 1
        return kind, job, [name]
    if kind == "not-a-section":
        section = draw(st.sampled_from(sorted(s for s, keys in sections.items() if keys)))
        job[section] = draw(st.sampled_from([1, "x", [1, 2], True]))
        return kind, job, [section]
    if kind == "duplicate":
        lam = draw(st.sampled_from([0.0, 0.2, 1.0]))
        job["method"]["lambda_choices"] = [*BASE_JOB["method"]["lambda_choices"], lam]
        return kind, job, ["method.lambda_choices"]
    if kind == "eps":
        norm = draw(st.sampled_from(["linf", "l2"]))
        eps = draw(st.floats(1.0, 1e6, exclude_min=True) if norm == "linf" else st.floats(8.01, 1e6))
        job["attack"].update(norm=norm, eps=eps)
        return kind, job, ["attack.eps"]
    if kind == "uri":
        from pipeline.config import LOCATION_SCHEMES

        key = draw(st.sampled_from(sorted(LOCATION_SCHEMES)))
        scheme = draw(st.from_regex(r"[a-z]{2,8}", fullmatch=True).filter(lambda s: s not in LOCATION_SCHEMES[key]))
        section, name = key.split(".")
        job.setdefault(section, {})[name] = f"{scheme}://host/x"
        return kind, job, [key]
    if kind == "yaml":
        text = yaml.safe_dump(job, sort_keys=False)
        cut = draw(st.sampled_from(["train: {epochs: [1, 2}\n", "method:\n  lambda_choices: [0, 1\n", "\tname: x\n",
                                    "data: {dataset: digits\n", "a: b: c\n", "- x\ny: 1\n"]))
        return kind, text + cut, []
    return kind, draw(st.sampled_from(["- a\n- b\n", "just text\n", "42\n"])), []  # not-a-mapping


@st.composite
def job_cases(draw: st.DrawFn) -> Case:
    kind, job, names = draw(broken_jobs())
    command = draw(st.sampled_from(JOB_COMMANDS))
    via_set = isinstance(job, dict) and kind not in ("not-a-section", "nesting", "unknown") and draw(st.booleans())
    extra = ["--out", "{sandbox}/out"] if command in ("train", "run", "sweep") else []
    if via_set:  # the base job in the file, the broken field as --set KEY=VALUE
        assert isinstance(job, dict)
        (key,) = names
        section, name = key.split(".", 1)
        value = job[section][name]
        text = yaml.safe_dump(BASE_JOB, sort_keys=False)
        return Case(f"job/{kind}/--set", [command, "{job}", *extra, "--set", f"{key}={json.dumps(value)}"], names, text)
    text = job if isinstance(job, str) else yaml.safe_dump(job, sort_keys=False, allow_unicode=True)
    return Case(f"job/{kind}", [command, "{job}", *extra], names or ["{job}"], text)


# option -> (subcommands with their required arguments, kind)
OPTIONS: dict[str, tuple[list[list[str]], str]] = {
    "--steps": ([["evaluate", "{sandbox}/ckpt.pt"], ["report", "{sandbox}/ckpt.pt"], ["train"]], "count"),
    "--max-images": ([["evaluate", "{sandbox}/ckpt.pt"]], "count"),
    "--batch-size": ([["evaluate", "{sandbox}/ckpt.pt"]], "count"),
    "--restarts": ([["report", "{sandbox}/ckpt.pt"]], "count"),
    "--sanity-images": ([["evaluate", "{sandbox}/ckpt.pt"]], "count"),
    "--epochs": ([["train"]], "count"),
    "-b": ([["train"]], "count"),
    "--dim": ([["train"]], "count"),
    "--decay_epochs": ([["train"]], "count"),
    "--workers": ([["data", "prepare", "--dataset", "digits", "--out", "{sandbox}/d"]], "count"),
    "--val-size": ([["data", "prepare", "--dataset", "digits", "--out", "{sandbox}/d"]], "count"),
    "--max-fires": ([["schedule", "{job}"]], "count"),
    "--seed": ([["evaluate", "{sandbox}/ckpt.pt"]], "whole"),
    "--lambdas": ([["evaluate", "{sandbox}/ckpt.pt"], ["demo", "--out", "{sandbox}/demo"]], "unit"),
    "--widths": ([["evaluate", "{sandbox}/ckpt.pt"]], "unit"),
    "--Lambda": ([["train"]], "unit"),
    "--lambda_choices": ([["train"]], "unit"),
    "--eps": ([["evaluate", "{sandbox}/ckpt.pt"], ["train"]], "nonnegative"),
    "--wd": ([["train"]], "nonnegative"),
    "--momentum": ([["train"]], "nonnegative"),
    "--lr": ([["train"]], "positive"),
    "--timeout": ([["track", "sync", "{sandbox}"]], "positive"),
    "--attack": ([["evaluate", "{sandbox}/ckpt.pt"]], "choice"),
    "--norm": ([["report", "{sandbox}/ckpt.pt"]], "choice"),
    "--device": ([["evaluate", "{sandbox}/ckpt.pt"]], "choice"),
    "--method": ([["train"]], "choice"),
    "--dataset": ([["train"], ["data", "prepare", "--out", "{sandbox}/d"]], "choice"),
    "--decay": ([["train"]], "choice"),
    "--encoding": ([["train"]], "choice"),
}
NON_NUMBERS = st.sampled_from(["", "abc", "λ", "nan", "NaN", "inf", "-inf", "1e999", "0x10", "1,5", "½", " "])


def _bad_option_value(kind: str) -> st.SearchStrategy[str]:
    if kind in ("count", "whole"):
        low = 0 if kind == "count" else -1
        return st.one_of(NON_NUMBERS, st.integers(-10**9, low).map(str),
                         st.floats(-1e3, 1e3, allow_nan=False).filter(lambda f: not f.is_integer()).map(repr))
    if kind == "unit":
        return st.one_of(NON_NUMBERS, st.floats(1.0, 1e9, exclude_min=True).map(repr),
                         st.floats(-1e9, 0.0, exclude_max=True).map(repr))
    if kind == "nonnegative":
        return st.one_of(NON_NUMBERS, st.floats(-1e9, 0.0, exclude_max=True).map(repr))
    if kind == "positive":
        return st.one_of(NON_NUMBERS, st.floats(-1e9, 0.0).map(repr))
    return st.text(min_size=1, max_size=10).filter(lambda t: t.strip() and not t.startswith("-")
                                                   and t not in CHOICE_VALUES)


CHOICE_VALUES = {"pgd", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack", "linf", "l2", "auto", "cpu", "cuda",
                 "oat", "oats", "pgdat", "digits", "mnist5k", "cifar10", "svhn", "stl10", "cos", "multisteps", "none",
                 "onehot", "dct", "rand"}


@st.composite
def option_cases(draw: st.DrawFn) -> Case:
    option = draw(st.sampled_from(sorted(OPTIONS)))
    commands, kind = OPTIONS[option]
    base = draw(st.sampled_from(commands))
    value = draw(_bad_option_value(kind))
    return Case(f"option/{kind}", [*base, f"{option}={value}"], [option])


PATH_CASES: list[tuple[str, list[str], str]] = [  # (kind, argv, the name the error must mention)
    ("out-is-a-file", ["train", "{job}", "--out", "{sandbox}/afile"], "--out"),
    ("out-is-a-file", ["run", "{job}", "--out", "{sandbox}/afile"], "--out"),
    ("out-is-a-file", ["sweep", "{job}", "--out", "{sandbox}/afile"], "--out"),
    ("out-is-a-file", ["compare", "{sandbox}/adir", "{sandbox}/adir", "--out", "{sandbox}/afile"], "--out"),
    ("out-is-a-file", ["demo", "--out", "{sandbox}/afile"], "--out"),
    ("out-is-a-file", ["report", "{sandbox}/adir", "--out", "{sandbox}/afile"], "--out"),
    ("out-is-a-file", ["data", "prepare", "--dataset", "digits", "--out", "{sandbox}/afile"], "--out"),
    ("file-is-a-folder", ["evaluate", "{sandbox}/ckpt.pt", "--json", "{sandbox}/adir"], "--json"),
    ("file-is-a-folder", ["evaluate", "{sandbox}/ckpt.pt", "--plot", "{sandbox}/adir"], "--plot"),
    ("file-in-a-file", ["evaluate", "{sandbox}/ckpt.pt", "--json", "{sandbox}/afile/x.json"], "afile"),
    ("folder-is-a-file", ["evaluate", "{sandbox}/ckpt.pt", "--state", "{sandbox}/afile"], "--state"),
    ("folder-is-a-file", ["evaluate", "{sandbox}/ckpt.pt", "--data-root", "{sandbox}/afile"], "--data-root"),
    ("folder-is-a-file", ["stack", "status", "--root", "{sandbox}/afile"], "--root"),
    ("folder-is-a-file", ["run", "{job}", "--storage", "{sandbox}/afile"], "--storage"),
    ("file-is-a-folder", ["stack", "status", "--env-file", "{sandbox}/adir"], "--env-file"),
    ("missing-job", ["train", "{sandbox}/nope.yaml"], "nope.yaml"),
    ("missing-job", ["run", "{sandbox}/nope.yaml"], "nope.yaml"),
    ("job-is-a-folder", ["train", "{sandbox}/adir"], "adir"),
    ("job-not-text", ["train", "{sandbox}/binary"], "binary"),
    ("missing-checkpoint", ["evaluate", "{sandbox}/nope.pt"], "nope.pt"),
    ("missing-checkpoint", ["report", "{sandbox}/nope.pt"], "nope.pt"),
    ("folder-without-checkpoint", ["evaluate", "{sandbox}/adir"], "adir"),
    ("not-a-checkpoint", ["evaluate", "{sandbox}/afile"], "afile"),
    ("not-a-checkpoint", ["evaluate", "{sandbox}/binary"], "binary"),
    ("missing-run", ["track", "sync", "{sandbox}/nope"], "nope"),
    ("missing-run", ["compare", "{sandbox}/nope", "{sandbox}/nope2"], "nope"),
    ("storage-scheme", ["run", "{job}", "--storage", "gs://bucket/p"], "--storage"),
    ("out-scheme", ["train", "{job}", "--out", "s3://bucket/p"], "--out"),
]


@st.composite
def uri_cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["mlflow-scheme", "mlflow-file-store", "ray-unreachable", "job-api-unreachable",
                                 "mlflow-unreachable"]))
    if kind == "mlflow-scheme":
        scheme = draw(st.from_regex(r"[a-z][a-z0-9+]{1,8}", fullmatch=True).filter(lambda s: s.split("+")[0] not in (
            "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "file")))
        cmd = draw(st.sampled_from([["train", "{job}", "--out", "{sandbox}/out"], ["run", "{job}"], ["sweep", "{job}"],
                                    ["retrain", "{job}"], ["compare", "{sandbox}/adir", "{sandbox}/adir"]]))
        return Case(kind, [*cmd, "--mlflow", f"{scheme}://{draw(st.sampled_from(['x', 'h:1', 'a/b']))}"], ["--mlflow"])
    if kind == "mlflow-file-store":
        uri = draw(st.sampled_from(["file:///tmp/mlruns-x", "./mlruns", "mlruns"]))
        return Case(kind, ["train", "{job}", "--out", "{sandbox}/out", "--mlflow", uri], ["--mlflow"])
    if kind == "ray-unreachable":
        cmd = draw(st.sampled_from(["run", "sweep"]))
        port = draw(st.sampled_from([1, 9, 47]))
        addr = draw(st.sampled_from([f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"]))
        return Case(kind, [cmd, "{job}", "--address", addr], [addr], env={"OAT_RAY_CONNECT_TIMEOUT_S": "2"})
    if kind == "job-api-unreachable":
        port = draw(st.sampled_from([1, 9, 47]))
        return Case(kind, ["submit", "{job}", "--address", f"http://127.0.0.1:{port}"], [f"127.0.0.1:{port}"],
                    env={"OAT_JOB_API_TIMEOUT_S": "2"})
    port = draw(st.sampled_from([1, 9, 47]))
    return Case(kind, ["train", "{job}", "--out", "{sandbox}/out", "--mlflow", f"http://127.0.0.1:{port}"],
                [f"127.0.0.1:{port}"], env={"OAT_MLFLOW_TIMEOUT_S": "2"})


# ------------------------------------------------------------------------------------------ running a case
@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    error: str | None = None  # an exception that escaped main()


class TrainingStarted(AssertionError):
    """A tripwire: a generated (invalid) case reached training or Ray."""


@contextlib.contextmanager
def tripwires() -> Iterator[None]:
    """Make ``fit`` (the training loop) and ``ray.init`` raise :class:`TrainingStarted` while a case runs: a refusal
    must come before either. Not a mock of what is tested: what is tested is that they are never reached."""
    # every module that binds the name, imported before the patch (one imported while it is in place would keep
    # the tripwire for good)
    import ray

    from pipeline.launch import local
    from pipeline.training import loop

    def tripped(*_: Any, **__: Any) -> Any:
        raise TrainingStarted("a generated bad case reached training or Ray")

    sites = [(loop, "fit"), (local, "fit"), (ray, "init")]  # ray.init: a local start or a join past the TCP probe
    saved = [getattr(mod, name) for mod, name in sites]
    for mod, name in sites:
        setattr(mod, name, tripped)
    try:
        yield
    finally:
        for (mod, name), orig in zip(sites, saved):
            setattr(mod, name, orig)


@dataclass
class Sandbox:
    """A folder that holds what cases may read (a file, a folder, a non-text file, a valid job) and in which they
    run (the working dir): after a refused case it must be byte for byte as before."""

    root: Path
    stats: dict[str, Any] = field(default_factory=lambda: {"cases": 0, "by_kind": {}, "slowest": (0.0, "")})

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "afile").write_text("not a folder\n")
        (self.root / "adir").mkdir(exist_ok=True)
        (self.root / "binary").write_bytes(bytes(range(256)) * 4)
        (self.root / "ckpt.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
        (self.root / "job.yaml").write_text(yaml.safe_dump(BASE_JOB, sort_keys=False))

    def snapshot(self) -> dict[str, tuple[int, int]]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st_ = p.lstat()
                out[str(p.relative_to(self.root))] = (st_.st_size, st_.st_mtime_ns if p.is_file() else 0)
        return out

    def fill(self, arg: str, job: Path) -> str:
        return arg.replace("{sandbox}", str(self.root)).replace("{job}", str(job))


def run_cli(argv: list[str], env: dict[str, str]) -> Outcome:
    """``oat ARGV`` in this process (its exit code, both streams); an exception escaping ``main`` is recorded."""
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)  # the whole environment: what a case sets (its timeouts, MLflow's client defaults that
    os.environ.update(env)  # the tracking module sets once per process) must not outlive it
    t0 = time.perf_counter()
    code: int | None = None
    escaped = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), tripwires():
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    except TrainingStarted as exc:
        escaped = f"TrainingStarted: {exc}"
    except Exception as exc:  # noqa: BLE001 - what the harness exists to find
        import traceback

        escaped = "".join(traceback.format_exception(exc))[-3000:]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Outcome(code, out.getvalue(), err.getvalue(), time.perf_counter() - t0, escaped)


def run_case(box: Sandbox, case: Case) -> Outcome:
    """Write the case's job file (if any), run it in the sandbox, and check the invariants (AssertionError)."""
    job = box.root / "job.yaml"
    made: Path | None = None
    if case.job_text is not None:
        made = box.root / "case.yaml"
        made.write_text(case.job_text, encoding="utf-8")
        job = made
    argv = [box.fill(a, job) for a in case.argv]
    names = [box.fill(n, job) for n in case.names]
    before = box.snapshot()
    cwd = os.getcwd()
    os.chdir(box.root)
    try:
        res = run_cli(argv, case.env)
    finally:
        os.chdir(cwd)
    try:
        check_refusal(res, names, before, box.snapshot(), argv)
    finally:
        if made is not None:
            made.unlink()
    s = box.stats
    s["cases"] += 1
    s["by_kind"][case.kind] = s["by_kind"].get(case.kind, 0) + 1
    if res.seconds > s["slowest"][0]:
        s["slowest"] = (res.seconds, " ".join(argv))
    return res


def check_refusal(res: Outcome, names: list[str], before: dict[str, Any], after: dict[str, Any],
                  argv: list[str]) -> None:
    shown = f"oat {' '.join(argv)}\n--- stderr ---\n{res.stderr[-1500:]}\n--- stdout ---\n{res.stdout[-500:]}"
    assert res.error is None, f"an exception escaped: {res.error}\n{shown}"
    assert res.code == 2, f"exit code {res.code}, expected 2\n{shown}"
    assert "Traceback" not in res.stderr + res.stdout, f"a traceback\n{shown}"
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("oat: error: ") or ": error: " in ln]
    assert lines, f"no 'oat: error:' or usage error line\n{shown}"
    assert any(n in res.stderr for n in names), f"the error names none of {names}\n{shown}"
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"the sandbox changed: {changed[:6]}\n{shown}"


# --------------------------------------------------------------------------------------------- REST
def build_served_model(folder: Path) -> Any:
    """A tiny OAT model (λ ∈ {0, 0.2, 1}) saved as the registered pyfunc is (code + weights, signature) and
    loaded back with MLflow: what ``mlflow models serve`` loads. Untrained weights: serving is what is tested."""
    import warnings

    import mlflow
    import torch

    from pipeline.files import FORMAT
    from pipeline.platform.serving import CODE_FILE, requirements, serving_code, signature_for
    from pipeline.science.model import ModelSpec, build_model

    spec = ModelSpec(backbone="small_cnn", in_channels=1, num_classes=10, input_size=[8, 8], method="oat",
                     lambdas=[0.0, 0.2, 1.0], widths=[1.0], film=True, dual_bn=True, encoding="rand", dim=8,
                     channels=[8, 16, 16])
    torch.manual_seed(0)
    model = build_model(spec).eval()
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "final.pt"
    torch.save({"format": FORMAT, "model_spec": spec.to_dict(), "state_dict": model.state_dict()}, ckpt)
    code = serving_code(folder / "code")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(str(folder / "model"), python_model=str(CODE_FILE),
                                 artifacts={"checkpoint": str(ckpt)}, code_paths=[str(code)],
                                 signature=signature_for(model), pip_requirements=requirements())
    return mlflow.pyfunc.load_model(str(folder / "model"))


def ask(model: Any, body: str | bytes, content_type: str = "application/json") -> tuple[int, str]:
    """One request as ``mlflow models serve`` answers it: MLflow's ``invocations`` and its error-to-status mapping
    (``_async_catch_mlflow_exception``); an exception of another kind would be the server's 500."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    try:
        r = scoring_server.invocations(body, content_type, model, model.metadata.get_input_schema())
        return r.status, r.response
    except MlflowException as exc:
        return exc.get_http_status_code(), exc.serialize_as_json()
    except Exception as exc:  # noqa: BLE001
        return 500, f"{type(exc).__name__}: {exc}"


GOOD_IMAGES = np.random.default_rng(0).random((3, 1, 8, 8)).round(3).tolist()


def good_request() -> str:
    return json.dumps({"inputs": GOOD_IMAGES, "params": {"lam": 0.2}})


@st.composite
def bad_requests(draw: st.DrawFn) -> tuple[str, str]:
    """(kind, body): a request the served model must refuse with HTTP 400."""
    from pipeline.platform.serving import MAX_BATCH

    kind = draw(st.sampled_from(["shape", "dtype", "nan", "range", "lam-missing", "lam-bad", "width-bad", "empty",
                                 "huge", "malformed", "wrong-keys"]))
    x = np.asarray(GOOD_IMAGES)
    params: dict[str, Any] = {"lam": 0.2}
    inputs: Any = GOOD_IMAGES
    if kind == "shape":
        shape = draw(st.lists(st.integers(1, 9), min_size=1, max_size=4).filter(
            lambda s: not (len(s) >= 1 and int(np.prod(s)) % 64 == 0 and (len(s) == 1 or s[-3:] == [1, 8, 8]
                                                                        or int(np.prod(s[1:])) == 64))))
        inputs = np.full(shape, 0.5).tolist()
    elif kind == "dtype":
        # (not true/false nor "0.5": MLflow's schema enforcement casts JSON booleans, integers and numeric strings to
        # float32 before the model sees the batch, so true is the pixel 1.0, a valid image; the model cannot tell,
        # docs/tracking.md says so)
        bad = draw(st.sampled_from(["a", None, [0.1, 0.2], {"v": 1}, "", "0.5.1"]))
        flat = x.copy().astype(object).reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = bad
        inputs = flat.reshape(x.shape).tolist()
    elif kind == "nan":
        flat = x.copy().reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        inputs = flat.reshape(x.shape).tolist()
    elif kind == "range":
        flat = x.copy().reshape(-1)
        # out of [0, 1] as float32 too (1 + 1e-16 is the pixel 1.0 once cast)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.one_of(st.floats(1.001, 1e6), st.floats(-1e6, -1e-3)))
        inputs = flat.reshape(x.shape).tolist()
    elif kind == "lam-missing":
        params = draw(st.sampled_from([{}, {"width": 1.0}, {"lam": None}]))
    elif kind == "lam-bad":
        # untrained: farther than the model's matching tolerance (1e-6, for λ sent as float32) from a trained λ
        params = {"lam": draw(st.one_of(st.floats(0, 1).filter(lambda v: min(abs(v - t) for t in (0, 0.2, 1)) > 1e-5),
                                        st.sampled_from([math.nan, math.inf, -0.5, 1.5, "abc", "", [0.2]])))}
    elif kind == "width-bad":
        params = {"lam": 0.2, "width": draw(st.one_of(st.floats(0, 1).filter(lambda v: abs(v - 1.0) > 1e-5),
                                                      st.sampled_from([math.nan, "wide", 2.0])))}
    elif kind == "empty":
        inputs = []
    elif kind == "huge":
        inputs = np.full((MAX_BATCH + draw(st.integers(1, 8)), 1, 8, 8), 0.5).tolist()
    if kind == "malformed":
        body = good_request()
        return kind, body[: draw(st.integers(1, len(body) - 2))]
    if kind == "wrong-keys":
        return kind, json.dumps(draw(st.sampled_from([{"foo": GOOD_IMAGES}, {"inputs": GOOD_IMAGES, "params": "x"},
                                                      {"params": {"lam": 0.2}}, [1, 2, 3], "text"])))
    return kind, json.dumps({"inputs": inputs, "params": params})


def check_rest_case(model: Any, kind: str, body: str, stats: dict[str, Any] | None = None) -> None:
    t0 = time.perf_counter()
    status, text = ask(model, body)
    assert status == 400, f"{kind}: HTTP {status}, expected 400: {text[:600]}\nbody: {body[:300]}"
    assert text.strip(), f"{kind}: a 400 without a message"
    ok, good = ask(model, good_request())
    assert ok == 200, f"after {kind}: a good request got HTTP {ok}: {good[:300]}"
    probs = np.asarray(json.loads(good)["predictions"])
    assert probs.shape == (3, 10) and np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-4)
    if stats is not None:
        stats["cases"] += 1
        stats["by_kind"][f"rest/{kind}"] = stats["by_kind"].get(f"rest/{kind}", 0) + 1
        dt = time.perf_counter() - t0
        if dt > stats.get("slowest_rest", (0.0, ""))[0]:
            stats["slowest_rest"] = (dt, kind)

