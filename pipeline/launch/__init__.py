"""Launchers: what runs a job. ``oat train`` in this process (:mod:`.local`), a Ray Train run (:mod:`.ray_run`), the
Tune sweep of dedicated models (:mod:`.sweep`), pipeline stages (:mod:`.stages`), job submission (:mod:`.submit`),
the comparison (:mod:`.compare`), the demo (:mod:`.demo`), evaluation reports (:mod:`.assess`), and scheduled
retraining (:mod:`.retrain`, :mod:`.schedule`)."""
