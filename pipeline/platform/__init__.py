"""The platform: MLflow tracking (runs, the outbox, the loop's MLflow callback), the model registry, serving as
an MLflow pyfunc, and the real services on one machine (S3, MLflow server, Ray) for ``oat stack`` and the tests."""
