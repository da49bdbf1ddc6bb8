"""MLflow models-from-code entry: the registered pyfunc is this file plus the checkpoint (no pickle of ours)."""

import mlflow

from pipeline.platform.serving import OATPyfunc

mlflow.models.set_model(OATPyfunc())
