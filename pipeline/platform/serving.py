"""The trained model as an MLflow pyfunc that serves the in-situ trade-off.

``predict(images, params={"lam": 0.3, "width": 0.75})`` returns class probabilities of the model conditioned on
that λ (and width, for OATS): one registered model answers at any trained point. Images are float32 in [0, 1],
shape (N, C, H, W) (or (N, C·H·W)). An untrained λ or width is refused with the trained ones listed.

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
        self.default_lam = float(self.model.lambdas[0])
        self.default_width = float(max(self.model.widths))

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        # np.ndarray hints: MLflow validates against the explicit signature, not the hints
        import torch
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

        params = params or {}
        lam = float(params.get("lam", self.default_lam))
        width = float(params.get("width", self.default_width))
        try:
            net = self.model.at(lam, width)
        except ValueError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        x = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
        try:
            x = x.reshape(-1, *self.model.input_shape)
        except ValueError:
            raise MlflowException(f"expected images of shape (N, {', '.join(map(str, self.model.input_shape))}), "
                                  f"got {tuple(x.shape)}", error_code=INVALID_PARAMETER_VALUE) from None
        with torch.inference_mode():
            return torch.softmax(net(torch.from_numpy(np.ascontiguousarray(x))), dim=1).numpy()


def signature_for(model: Any) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    c, h, w = model.input_shape
    k = int(model.spec.num_classes)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c, h, w))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, k))]),
                          params=ParamSchema([ParamSpec("lam", "float", float(model.lambdas[0])),
                                              ParamSpec("width", "float", float(max(model.widths)))]))


def requirements() -> list[str]:
    import mlflow
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}",
            "pyyaml"]
