import copy

import pytest
import scipy.fft
import torch

from pipeline.config import job_from_dict
from pipeline.science.conditioning import Route
from pipeline.science.dual_bn import CondNorm
from pipeline.science.encoding import encoding_matrix
from pipeline.science.model import build_model, count_film_layers, film_parameters
from pipeline.training.setup import spec_from_job

from .conftest import tiny_model


def reference_model(ds, method="oat", size=32):
    job = job_from_dict({"data": {"dataset": ds}, "method": {"name": method}})
    return build_model(spec_from_job(job, 3, 10, [size, size]))


@pytest.mark.parametrize("ds,film_params,film_layers", [("cifar10", 12_056_320, 33), ("svhn", 5_260_352, 12)])
def test_film_parameter_count_matches_reference(ds, film_params, film_layers):
    m = reference_model(ds)
    assert film_parameters(m) == film_params  # 12.06 M (ResNet-34), 5.26 M (WRN-16-8) at d = 128
    assert count_film_layers(m) == film_layers


@pytest.mark.parametrize("ds,size", [("cifar10", 32), ("svhn", 32), ("stl10", 96)])
@pytest.mark.parametrize("method", ["pgdat", "oat", "oats"])
def test_reference_backbones_forward_at_reference_size(ds, size, method):
    m = reference_model(ds, method, size).eval()
    x = torch.rand(2, 3, size, size)
    lam = 0.5 if method == "pgdat" else 0.3
    for w in m.widths:
        with torch.no_grad():
            out = m(x, m.condition(lam, w))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert film_parameters(m) == 0 if method == "pgdat" else film_parameters(m) > 0


def test_plain_model_has_single_bn_and_no_film():
    m = reference_model("cifar10", "pgdat")
    norms = [mod for mod in m.modules() if isinstance(mod, CondNorm)]
    assert norms and all(n.bn_a is None and n.film is None and len(n.bn_c) == 1 for n in norms)


def test_oats_has_bn_pair_per_width():
    m = reference_model("svhn", "oats")
    norms = [mod for mod in m.modules() if isinstance(mod, CondNorm)]
    assert all(len(n.bn_c) == 3 and n.bn_a is not None and len(n.bn_a) == 3 for n in norms)
    assert [bn.num_features for bn in norms[-1].bn_a] == [256, 384, 512]


@pytest.mark.parametrize("backbone,extra", [("resnet", {"blocks": [1, 1], "channels": [8, 16]}),
                                            ("wrn", {"depth": 10, "widen": 1}),
                                            ("small_cnn", {"channels": [4, 8, 8]}),
                                            ("lenet", {"channels": [4, 8, 16]})])
def test_any_input_size_and_channel_count(backbone, extra):
    job = job_from_dict({"data": {"dataset": "digits"}, "model": {"backbone": backbone, **extra}})
    m = build_model(spec_from_job(job, 5, 7, [20, 13])).eval()
    assert m(torch.rand(3, 5, 20, 13), m.condition(0.2)).shape == (3, 7)


def test_dual_bn_routes_by_per_sample_mask_in_train_mode():
    """A mixed batch in any order gives each sample what its own group gives it alone: BN_c statistics
    from the λ = 0 samples only, BN_a from the rest. No prefix assumption (the official bug)."""
    m = tiny_model().train()
    x = torch.rand(12, 1, 8, 8)
    lam = torch.tensor([0.3, 0.0, 1.0, 0.0, 0.1, 0.4, 0.0, 0.2, 0.3, 1.0, 0.0, 0.1], dtype=torch.float64)
    cond = m.condition(lam)
    assert cond.route == Route.MIXED and cond.order is not None and cond.n_clean == 4
    ref = copy.deepcopy(m)
    out = m(x, cond)
    c, a = lam == 0, lam > 0
    out_c = ref(x[c], ref.condition(lam[c]))
    out_a = ref(x[a], ref.condition(lam[a]))
    torch.testing.assert_close(out[c], out_c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[a], out_a, rtol=1e-5, atol=1e-5)
    for got, want in zip(m.buffers(), ref.buffers()):  # running stats updated identically
        torch.testing.assert_close(got, want)


def test_sorted_mixed_batch_uses_views_and_matches_gathered_path():
    m = tiny_model().train()
    x = torch.rand(8, 1, 8, 8)
    lam = torch.tensor([0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 1.0, 1.0], dtype=torch.float64)
    cond = m.condition(lam)
    assert cond.route == Route.MIXED and cond.order is None
    perm = torch.tensor([3, 0, 7, 1, 2, 6, 5, 4])
    ref = copy.deepcopy(m)
    out_sorted = m(x, cond)
    out_perm = ref(x[perm], ref.condition(lam[perm]))
    torch.testing.assert_close(out_perm, out_sorted[perm], rtol=1e-5, atol=1e-5)


def test_each_sample_is_conditioned_on_its_own_lambda_in_eval_mode():
    m = tiny_model().eval()
    x = torch.rand(6, 1, 8, 8)
    lam = torch.tensor([0.0, 1.0, 0.3, 0.1, 0.4, 0.2], dtype=torch.float64)
    with torch.no_grad():
        batched = m(x, m.condition(lam))
        single = torch.cat([m(x[i:i + 1], m.condition(float(lam[i]))) for i in range(6)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(single[0], m(x[:1], m.condition(1.0)))  # λ matters


def test_slimmable_width_uses_only_leading_channels():
    m = tiny_model(widths=[0.5, 0.75, 1.0], channels=[8, 16, 16]).eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        before = m(x, m.condition(0.3, 0.5))
        m.backbone.conv1.weight[4:] += 1.0  # channels 4..7 are outside the 0.5-width subnetwork
        m.backbone.conv2.weight[8:] -= 1.0
        m.backbone.bn1.film.fc2.weight[4:8] += 1.0  # a's rows beyond 4 channels
        after = m(x, m.condition(0.3, 0.5))
        full_changed = m(x, m.condition(0.3, 1.0))
    torch.testing.assert_close(before, after)
    assert full_changed.shape == (4, 10)
    with pytest.raises(ValueError, match=r"width 0.6 was not trained; this model accepts widths \[0.5, 0.75, 1.0\]"):
        m.condition(0.3, 0.6)


@pytest.mark.parametrize("method", ["pgdat", "oat"])
def test_one_width_multiplier_builds_a_plain_narrow_model(method):
    """A dedicated model at width 0.5 (the OATS comparison's per-width baseline) has half the channels in every
    layer, so about a quarter of the conv weights, and no unused slices."""
    job = job_from_dict({"data": {"dataset": "svhn"}, "method": {"name": method, "Lambda": 0.3},
                         "model": {"widths": [0.5]}})
    half = build_model(spec_from_job(job, 3, 10, [32, 32])).eval()
    full = reference_model("svhn", method)
    convs = [mod for mod in half.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert all(tuple(c.weight.shape[:2]) == (c.out_list[0], c.in_list[0]) for c in convs)
    conv_w = sum(c.weight.numel() for c in convs)
    full_w = sum(c.weight.numel() for c in full.modules() if isinstance(c, torch.nn.Conv2d))
    assert 0.24 < conv_w / full_w < 0.27
    assert half.widths == [0.5] and half.at(0.3).width == 0.5
    with torch.no_grad():
        assert half.at(0.3)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    if method == "oat":  # FiLM sized for the narrow net, not the full one
        assert 0.2 < film_parameters(half) / film_parameters(full) < 0.3


def test_encodings():
    q = encoding_matrix("rand", 16, seed=3)
    torch.testing.assert_close(q @ q.T, torch.eye(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(q, encoding_matrix("rand", 16, seed=3))
    assert not torch.allclose(q, encoding_matrix("rand", 16, seed=4))
    assert torch.equal(encoding_matrix("onehot", 5), torch.eye(5))
    want = torch.from_numpy(scipy.fft.dct(torch.eye(8).numpy(), axis=0)).float()
    torch.testing.assert_close(encoding_matrix("dct", 8), want, atol=1e-5, rtol=1e-5)
    assert encoding_matrix("none", 1).shape == (0, 1)


def test_lambda_code_is_the_row_at_its_position():
    m = tiny_model(encoding="onehot", dim=8)
    cond = m.condition(0.3)
    assert torch.equal(cond.codes, torch.eye(8)[3:4])


def test_untrained_lambda_is_a_clear_error_except_with_encoding_none():
    m = tiny_model()
    with pytest.raises(ValueError, match=r"λ \[0.25\] was not trained; this model accepts λ ∈ \[0.0, 0.1"):
        m.condition(0.25)
    with pytest.raises(ValueError, match="only encoding 'none' interpolates"):
        m.at(lam=0.25)
    free = tiny_model(encoding="none", dim=1).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert free.at(lam=0.25)(x).shape == (2, 10)
        assert not torch.allclose(free.at(lam=0.25)(x), free.at(lam=0.3)(x))
    with pytest.raises(ValueError, match=r"λ must lie in \[0, 1\]"):
        free.condition(1.5)


def test_at_returns_plain_module_and_dedicated_model_checks_its_lambda():
    m = tiny_model().eval()
    f = m.at(lam=0.3)
    assert isinstance(f, torch.nn.Module) and f(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert m.input_shape == (1, 8, 8) and m.lambdas == [0.0, 0.1, 0.2, 0.3, 0.4, 1.0] and m.widths == [1.0]
    with pytest.raises(ValueError, match="pick a λ"):
        m.at()
    ded = tiny_model(method="pgdat", lambdas=[0.5], film=False, dual_bn=False, encoding="none", dim=1).eval()
    assert ded.at()(torch.rand(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(ValueError, match="was not trained"):
        ded.at(lam=0.3)


def test_film_scale_and_shift_fold_into_bn_affine():
    """The single multiply-add equals BN(x)·lrelu(a) + lrelu(b) computed the long way."""
    m = tiny_model().train()
    norm = m.backbone.bn2
    x = torch.randn(5, 16, 4, 4)
    cond = m.condition(0.4)
    ref_bn = copy.deepcopy(norm.bn_a[0])
    got = norm(x, cond)
    h = norm.film.fc2(torch.nn.functional.leaky_relu(norm.film.fc1(cond.codes), 0.01))
    a, b = torch.nn.functional.leaky_relu(h, 0.01).chunk(2, dim=1)
    want = ref_bn(x) * a[:, :, None, None] + b[:, :, None, None]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_lenet_conditions_both_convs_and_slims_for_oats():
    """The small-data backbone: FiLM after both conv BNs (2 FiLM layers), a BN pair per width, the classifier
    head reads only the active channels' features."""
    job = job_from_dict({"data": {"dataset": "mnist5k"}, "method": {"name": "oats"}, "model": {"widths": [0.5, 1.0]}})
    assert job.model.backbone == "lenet"
    m = build_model(spec_from_job(job, 1, 10, [28, 28])).eval()
    assert count_film_layers(m) == 2 and len(m.backbone.bn1.bn_c) == len(m.backbone.bn1.bn_a) == 2
    x = torch.rand(4, 1, 28, 28)
    assert m(x, m.condition(0.3, 0.5)).shape == (4, 10)
    with torch.no_grad():  # the inactive half of the features does not reach the half-width head
        m.backbone.fc.weight[:, 16 * 49:] = float("nan")  # conv2: 32 channels, 16 at width 0.5
    assert torch.isfinite(m(x, m.condition(0.3, 0.5))).all()
    assert not torch.isfinite(m(x, m.condition(0.3, 1.0))).all()


def test_wrn_keeps_pytorchs_default_initialisation_as_the_official_code():
    """The official WideResNetOAT sets no initialisation of its own (its source, fast_adv, drew kaiming weights
    and zero biases): every conv weight lies within PyTorch's default bound 1/sqrt(fan_in), the biases are not 0."""
    job = job_from_dict({"data": {"dataset": "svhn"}, "model": {"backbone": "wrn", "depth": 10, "widen": 2}})
    m = build_model(spec_from_job(job, 3, 10, [32, 32]))
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs and all(float(c.weight.abs().max()) <= c.weight[0].numel() ** -0.5 + 1e-6 for c in convs)
    assert float(m.backbone.linear.bias.abs().sum()) > 0


def test_lenet_without_batch_norm_keeps_film_and_conv_biases():
    """model.batch_norm: false (the small-data recipe: BN masks gradients on MNIST-5k): no BatchNorm anywhere,
    no dual BN, the convs keep their biases, and FiLM alone still conditions the output on λ."""
    job = job_from_dict({"data": {"dataset": "mnist5k"}, "model": {"batch_norm": False}})
    assert job.model.use2BN is False
    spec = spec_from_job(job, 1, 10, [28, 28])
    assert spec.batch_norm is False and spec.dual_bn is False
    m = build_model(spec).eval()
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    assert m.backbone.conv1.bias is not None and m.backbone.conv2.bias is not None
    assert count_film_layers(m) == 2
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(m(x, m.condition(0.0)), m(x, m.condition(1.0)))
        # no BN re-normalises what FiLM scales, so its scale is 1 + a: a FiLM that outputs 0 is the identity
        site, h = m.backbone.bn1, torch.randn(4, 16, 28, 28)
        for p in site.film.parameters():
            p.zero_()
        torch.testing.assert_close(site(h, m.condition(0.3)), h)
    pgdat = build_model(spec_from_job(job_from_dict({"data": {"dataset": "mnist5k"}, "model": {"batch_norm": False},
                                                     "method": {"name": "pgdat", "Lambda": 1.0}}), 1, 10, [28, 28]))
    assert count_film_layers(pgdat) == 0 and not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in pgdat.modules())


def test_clean_bn_routes_only_the_clean_samples_through_bn():
    """model.clean_bn (with batch_norm false): BN_c on the λ = 0 route, none on λ > 0. In eval mode a mixed batch
    in any order gives every sample what it gets alone; the λ > 0 samples never touch BN_c."""
    job = job_from_dict({"data": {"dataset": "mnist5k"}, "model": {"batch_norm": False, "clean_bn": True},
                         "method": {"lambda_choices": [0.0, 0.4, 1.0]}})
    spec = spec_from_job(job, 1, 10, [28, 28])
    assert spec.dual_bn and spec.clean_bn and not spec.batch_norm
    m = build_model(spec).eval()
    site = m.backbone.bn1
    assert site.bn_a is None and len(site.bn_c) == 1
    with torch.no_grad():  # distinct running statistics, so a wrong route shows
        site.bn_c[0].running_mean.fill_(0.5)
        site.bn_c[0].running_var.fill_(4.0)
    x = torch.rand(6, 1, 28, 28)
    lam = torch.tensor([1.0, 0.0, 0.4, 0.0, 1.0, 0.4])  # not BN_c-first: gathered and scattered back
    with torch.no_grad():
        mixed = m(x, m.condition(lam))
        alone = torch.cat([m(x[i:i + 1], m.condition(float(lam[i]))) for i in range(6)])
        torch.testing.assert_close(mixed, alone, rtol=1e-4, atol=1e-5)
        site.bn_c[0].running_mean.fill_(-3.0)  # the λ > 0 samples do not see BN_c
        after = m(x, m.condition(lam))
    assert torch.allclose(after[lam > 0], mixed[lam > 0]) and not torch.allclose(after[lam == 0], mixed[lam == 0])
