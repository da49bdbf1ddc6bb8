"""The trained model as an MLflow pyfunc that serves the in-situ trade-off.

``predict(images, params={"lam": 0.3, "width": 0.75})`` returns class probabilities of the model conditioned on
that λ (and width, for OATS): one registered model answers at any trained point. Images are float32 in [0, 1],
shape (N, C, H, W) (or (N, C·H·W)), at most :data:`MAX_BATCH` per request; ``lam`` is required. A request without
``lam``, an untrained λ or width (the trained ones listed), NaN, infinite or out-of-range pixels, an empty or
oversized batch are refused (HTTP 400 from ``mlflow models serve``) with the reason.

The model is saved as *code + weights*: ``serving_model.py`` (MLflow's models-from-code; no pickled objects of
ours), the part of this package that serving needs under ``code/`` (the science core, the checkpoint reader and
this module: :data:`SERVED`, no Ray, no launchers, no local stack), and the checkpoint (loaded with
``torch.load(weights_only=True)``).

    m = mlflow.pyfunc.load_model("models:/digits_oat@champion")
    m.predict(x, params={"lam": 1.0})
    mlflow models serve -m models:/digits_oat@champion --env-manager local -p 5001
    curl -d '{"inputs": [...], "params": {"lam": 0.3}}' -H 'Content-Type: application/json' localhost:5001/invocations
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # serving needs MLflow; training without tracking does not
    PythonModel = object  # type: ignore[assignment,misc]

CODE_FILE = Path(__file__).with_name("serving_model.py")
PACKAGE = Path(__file__).resolve().parents[1]
# what a registered model's code is, relative to the package: all that load_model and this pyfunc import
SERVED = ("__init__.py", "files.py", "science", "platform/__init__.py", "platform/serving.py",
          "platform/serving_model.py")


def serving_code(dest: Path) -> Path:
    """The served subset of this package, copied to ``dest/pipeline``."""
    root = dest / "pipeline"
    for rel in SERVED:
        src, dst = PACKAGE / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    return root


class OATPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        import torch

        from pipeline.science.model import load_model

        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        self.model = load_model(context.artifacts["checkpoint"], "cpu")
        self.default_width = float(max(self.model.widths))

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        # np.ndarray hints: MLflow validates against the explicit signature, not the hints
        import torch
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

        def refuse(msg: str) -> MlflowException:
            return MlflowException(msg, error_code=INVALID_PARAMETER_VALUE)  # HTTP 400 from the scoring server

        params = params or {}
        trained = ", ".join(f"{v:g}" for v in self.model.lambdas)
        if params.get("lam") is None:  # the signature's default is None: a request must say which λ it wants
            raise refuse(f"params.lam is required: the trade-off λ to answer at, one of the trained [{trained}]")
        lam, width = _param(params, "lam", refuse), _param(params, "width", refuse, self.default_width)
        try:
            net = self.model.at(lam, width)
        except ValueError as exc:
            raise refuse(str(exc)) from None
        try:
            x = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
            x = x.reshape(-1, *self.model.input_shape)
        except (ValueError, TypeError):
            got = getattr(model_input, "shape", None) or type(model_input).__name__  # ragged input has no shape
            raise refuse(f"expected images of shape (N, {', '.join(map(str, self.model.input_shape))}) as float32, "
                         f"got {tuple(got) if isinstance(got, tuple) else got}") from None
        check_images(x, refuse)
        with torch.inference_mode():
            return torch.softmax(net(torch.from_numpy(np.ascontiguousarray(x))), dim=1).numpy()


# the most images one request may carry (a bigger batch is refused, not queued: split it); 1,024 CIFAR-10 images
# are 12 MB of float32, an STL-10 batch 113 MB
MAX_BATCH = 1024


def _param(params: dict[str, Any], name: str, refuse: Any, default: float | None = None) -> float:
    import math

    raw = params.get(name)
    if raw is None:
        raw = default  # a missing or null width: the full width
    try:
        value = float(raw)  # type: ignore[arg-type]  # None and the like: TypeError, refused below
    except (TypeError, ValueError):
        raise refuse(f"params.{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise refuse(f"params.{name}={raw!r}: expected a finite number")
    return value


def check_images(x: np.ndarray, refuse: Any) -> None:
    """What a served model refuses (HTTP 400, the reason named): an empty or oversized batch, NaN or infinite
    pixels, pixels outside [0, 1] (the model's input range: 0-255 images must be divided by 255)."""
    if x.shape[0] == 0:
        raise refuse("an empty batch: send at least one image")
    if x.shape[0] > MAX_BATCH:
        raise refuse(f"{x.shape[0]} images in one request; at most {MAX_BATCH} (split the batch)")
    finite = np.isfinite(x)
    if not finite.all():
        raise refuse(f"{int(x.size - finite.sum())} pixel(s) are NaN or infinite")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise refuse(f"pixels must lie in [0, 1] (this batch: {lo:g} to {hi:g}); divide 0-255 images by 255")


def signature_for(model: Any) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    c, h, w = model.input_shape
    k = int(model.spec.num_classes)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c, h, w))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, k))]),
                          # lam: no default (None, refused by predict): a request must name its λ
                          params=ParamSchema([ParamSpec("lam", "float", None),
                                              ParamSpec("width", "float", float(max(model.widths)))]))


def requirements() -> list[str]:
    import mlflow
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}",
            "pyyaml"]
