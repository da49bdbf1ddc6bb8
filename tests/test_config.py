from pathlib import Path

import pytest

from pipeline.config import ConfigError, JobConfig, default_step_size, job_from_dict, load_job, parse_override

JOBS = sorted((Path(__file__).parent.parent / "jobs").glob("*.yaml"))


def test_defaults_are_the_reference_constants():
    job = job_from_dict({})
    assert job.data.dataset == "cifar10" and job.model.backbone == "resnet34"
    assert job.method.lambda_choices == [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]
    assert job.attack.eps == pytest.approx(8 / 255) and job.attack.steps == 7
    assert job.attack.step_size == pytest.approx(10 / 255 / 7)  # min(1.25ε, ε+4/255)/steps ≈ 1.43/255
    assert (job.optim.lr, job.optim.momentum, job.optim.weight_decay) == (0.1, 0.9, 5e-4)
    assert job.optim.schedule == "cosine" and job.train.epochs == 200 and job.train.batch_size == 128
    assert job.model.encoding == "rand" and job.model.dim == 128 and job.model.use2BN
    assert job.data.val_size == 5000 and job.eval.batch_size == 100
    assert job.method.zero_fraction == pytest.approx(1 / 6)


@pytest.mark.parametrize("ds,backbone,dropout", [("svhn", "wrn16_8", 0.3), ("stl10", "wrn40_2", 0.3),
                                                 ("cifar10", "resnet34", 0.0)])
def test_reference_backbone_per_dataset(ds, backbone, dropout):
    job = job_from_dict({"data": {"dataset": ds}})
    assert job.model.backbone == backbone and job.model.dropout == dropout


def test_oats_gets_reference_widths():
    assert job_from_dict({"method": {"name": "oats"}}).model.widths == [0.5, 0.75, 1.0]
    assert job_from_dict({}).model.widths == [1.0]


def test_unknown_key_names_dotted_path_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        job_from_dict({"train": {"epocs": 3}})
    msg = str(e.value)
    assert msg.startswith("train.epocs: unknown key") and "epochs" in msg and "batch_size" in msg
    with pytest.raises(ConfigError, match=r"^trian: unknown key; allowed keys: name, description, schedule, data"):
        job_from_dict({"trian": {}})


def test_bad_value_names_allowed_values():
    with pytest.raises(ConfigError) as e:
        job_from_dict({"method": {"name": "trades"}})
    assert "method.name" in str(e.value) and "pgdat, oat, oats" in str(e.value)
    with pytest.raises(ConfigError, match=r"data.dataset: 'mnist' is not allowed; allowed values: digits"):
        job_from_dict({"data": {"dataset": "mnist"}})
    with pytest.raises(ConfigError, match=r"train.epochs: expected an integer, got 'ten'"):
        job_from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"train.amp: expected true or false"):
        job_from_dict({"train": {"amp": "yes"}})
    with pytest.raises(ConfigError, match=r"method.lambda_choices\[1\]: expected a number"):
        job_from_dict({"method": {"lambda_choices": [0, "x"]}})


@pytest.mark.parametrize("section,msg", [
    ({"method": {"lambda_choices": [0.0, 1.5]}}, r"method.lambda_choices\[1\]: 1.5 must be <= 1$"),
    ({"method": {"lambda_choices": [0.1, 1.0]}}, r"method.lambda_choices: OAT/OATS need 0.0"),
    ({"model": {"widths": [0.5, 1.0]}}, r"model.widths: .*only OATS"),
    ({"method": {"name": "oats"}, "model": {"widths": [0.5, 0.75]}}, r"must include 1.0"),
    ({"model": {"widths": [0.0]}}, r"model.widths\[0\]: 0.0 must be > 0$"),
    ({"sweep": {"widths": [0.5, 0.5]}}, r"sweep.widths: \[0.5, 0.5\] repeats a value"),
    ({"sweep": {"widths": [1.5]}}, r"sweep.widths\[0\]: 1.5 must be <= 1$"),
    ({"attack": {"eps": -0.1}}, r"attack.eps: -0.1 must be >= 0"),
    ({"attack": {"eps": 3}}, r"attack.eps: 3 is outside \[0, 1\]: images are in \[0, 1\]"),
    ({"attack": {"eps": 30, "norm": "l2"}, "data": {"dataset": "digits"}}, r"attack.eps: 30 is outside \[0, 8\]"),
    ({"method": {"lambda_choices": []}}, r"method.lambda_choices: an empty list"),
    ({"ray": {"num_workers": 4}, "train": {"batch_size": 2}}, r"train.batch_size: 2 is smaller than"),
    ({"tracking": {"uri": "ftp://x/y"}}, r"tracking.uri: 'ftp://x/y': ftp is not allowed here; allowed: http://…"),
    ({"ray": {"storage_path": "gs://b/p"}}, r"ray.storage_path: 'gs://b/p': gs is not allowed here"),
    ({"train": {"epochs": 0}}, r"train.epochs: 0 must be >= 1"),
    ({"eval": {"lambdas": [0.25]}}, r"eval.lambdas\[0\]: 0.25 is not a trained λ"),
    ({"method": {"name": "oats"}, "eval": {"strong_widths": [0.6]}},
     r"eval.strong_widths\[0\]: 0.6 is not an evaluated width; allowed: \[0.5, 0.75, 1.0\]"),
    ({"model": {"backbone": "wrn", "depth": 15}}, r"model.depth"),
])
def test_cross_field_rules(section, msg):
    with pytest.raises(ConfigError, match=msg):
        job_from_dict(section)


def test_overrides_are_yaml_values_and_fractions():
    job = job_from_dict({}, ["train.epochs=3", "method.lambda_choices=[0, 0.5, 1]", "attack.eps=4/255",
                             "model.encoding=onehot", "eval.max_images=null"])
    assert job.train.epochs == 3 and job.method.lambda_choices == [0.0, 0.5, 1.0]
    assert job.attack.eps == pytest.approx(4 / 255) and job.model.encoding == "onehot"
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="train.nope: unknown key"):
        job_from_dict({}, ["train.nope=1"])


def test_encoding_none_sets_dim_one_and_allows_any_eval_lambda():
    job = job_from_dict({"model": {"encoding": "none"}, "eval": {"lambdas": [0.25]}})
    assert job.model.dim == 1 and job.eval.lambdas == [0.25]


def test_step_size_rule():
    assert default_step_size("linf", 8 / 255, 7) == pytest.approx(min(10 / 255, 12 / 255) / 7)
    assert default_step_size("linf", 0.2, 7) == pytest.approx((0.2 + 4 / 255) / 7)
    assert default_step_size("l2", 0.5, 10) == pytest.approx(0.125)


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_job_file_loads_and_round_trips(path, tmp_path):
    job = load_job(path)
    assert isinstance(job, JobConfig)
    resolved = tmp_path / "config.yaml"
    resolved.write_text(job.to_yaml())
    assert load_job(resolved).to_dict() == job.to_dict()


def test_missing_and_malformed_job_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_job(bad)


def test_resolve_returns_a_new_job():
    raw = job_from_dict({"method": {"name": "oats"}}, resolve=False)
    before = raw.to_dict()
    job = raw.resolve()
    assert job is not raw and raw.to_dict() == before and raw.model.widths is None
    assert job.model.widths == [0.5, 0.75, 1.0] and job.model.backbone == "resnet34"
    assert job.resolve().to_dict() == job.to_dict()  # resolving twice changes nothing


def test_methods_come_from_the_registry():
    from pipeline.science.methods import METHODS

    for name, method in METHODS.items():
        job = job_from_dict({"method": {"name": name}})
        assert job.model.use2BN == method.conditioned and job.tracking.register == method.conditioned
        assert len(job.model.widths) == (3 if method.slimmable else 1)
    assert job_from_dict({"method": {"name": "pgdat", "Lambda": 0.3}}).lambdas == [0.3]


def test_assignment_is_validated_with_the_dotted_key():
    job = job_from_dict({})
    job.train.threads = 4
    job.attack.eps = "4/255"
    assert job.train.threads == 4 and job.attack.eps == pytest.approx(4 / 255)
    with pytest.raises(ConfigError, match=r"^train.threads: expected an integer, got 'four'"):
        job.train.threads = "four"
    with pytest.raises(ConfigError, match=r"^model.encoding: 'sparse' is not allowed; allowed values: rand, onehot"):
        job.model.encoding = "sparse"
    with pytest.raises(ConfigError, match=r"^data.dataset: 'mnist' is not allowed"):
        job.data.dataset = "mnist"
    assert job.train.threads == 4 and job.model.encoding == "rand"


def test_wrong_shapes_and_several_errors():
    with pytest.raises(ConfigError, match=r"^train: expected a section \(mapping\), got 5"):
        job_from_dict({"train": 5})
    with pytest.raises(ConfigError, match=r"^model.widths: expected a list, got 0.5"):
        job_from_dict({"model": {"widths": 0.5}})
    with pytest.raises(ConfigError) as e:
        job_from_dict({"train": {"epochs": "ten", "amp": 1}, "eval": {"test_attacks": ["pgd", "fgsm"]}})
    assert str(e.value).splitlines() == [
        "train.epochs: expected an integer, got 'ten'", "train.amp: expected true or false, got 1",
        "eval.test_attacks[1]: 'fgsm' is not allowed; allowed values: pgd, apgd-ce, apgd-t, fab-t, square, autoattack"]


def test_help_config_lists_every_field_without_a_job(capsys):
    from pipeline.cli import main
    from pipeline.config import JobConfig

    with pytest.raises(SystemExit) as e:
        main(["train", "--help-config"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "  train.batch_size: integer = 128\n      the global batch" in out
    assert "  optim.schedule: one of cosine, multistep, constant, onecycle = cosine" in out
    assert "  data.dataset: one of digits, mnist5k, cifar10, svhn, stl10 = cifar10" in out
    assert "  attack.eps: number or fraction (e.g. 8/255) = 0.0313" in out
    for section, info in JobConfig.model_fields.items():
        fields = getattr(info.annotation, "model_fields", None)
        for name in fields or [section]:
            assert (f"  {section}.{name}: " if fields else f"  {section}: ") in out
