"""The science core: what the paper defines, as plain PyTorch.

λ encodings (:mod:`.encoding`), the per-sample condition (:mod:`.conditioning`), FiLM (:mod:`.film`), dual BN
(:mod:`.dual_bn`), slimmable layers (:mod:`.slimmable`), the backbones (:mod:`.backbones`) and the model with its
checkpoint loader (:mod:`.model`); λ sampling (:mod:`.sampling`); the PGDAT / OAT / OATS objectives and their
registry (:mod:`.methods`); PGD (:mod:`.attacks`); trade-off curves (:mod:`.curves`); AutoAttack and the
gradient-masking sanity checks (:mod:`.robustness`). It imports nothing of the rest of the package but
:mod:`pipeline.files`, and knows nothing of the loop, Ray or MLflow.
"""
