"""The training loop: :func:`pipeline.training.loop.fit` and what it is made of.

The loop (:mod:`.loop`), its callback protocol (:mod:`.callbacks`, its only way out), DDP helpers (:mod:`.ddp`),
the run's set-up (:mod:`.setup`), checkpoints and resume (:mod:`.checkpoint`), the best weights per point
(:mod:`.best`), the test curve (:mod:`.curve`), progress lines (:mod:`.progress`) and metric names
(:mod:`.metrics`). The same code runs in one process and in every Ray worker; it imports neither Ray nor MLflow.
"""
