"""Prepared .beton sets and the FFCV loaders: real files written by FFCV's writer, read by its Loader."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.data import DataError, load_splits, open_data, prepare
from pipeline.data.beton import MANIFEST, open_prepared, read_manifest
from pipeline.data.s3 import sha256_file
from pipeline.data.settings import DataConfig
from pipeline.data.source import BetonSource, MemorySource

from .datagen import write_cifar, write_stl, write_svhn


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def digits_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("beton") / "digits"
    manifest, status = prepare(DataConfig(dataset="digits"), str(out), log=quiet)
    assert status == "written"
    return out


def corrupt_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_prepare_digits_writes_a_verified_set(digits_set, tmp_path):
    m = read_manifest(str(digits_set))
    assert m is not None and m.dataset == "digits" and m.format == "oat-beton/1"
    assert {s: m.count(s) for s in ("train", "val", "test")} == {"train": 1200, "val": 200, "test": 397}
    assert m.image_shape == [1, 8, 8] and m.num_classes == 10 and m.classes[3] == "3" and m.scale == 16.0
    assert m.val_size == 200 and "test = the last 397" in m.split_definition and m.augment is None
    assert m.writer["ffcv"] == "1.0.2" and "torch" in m.writer
    for entry in m.files.values():
        path = digits_set / entry["file"]
        assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size
    assert not [p for p in digits_set.iterdir() if p.name.startswith(".")]  # no temporary files left
    before = {p.name: p.stat().st_mtime_ns for p in digits_set.iterdir()}
    _, status = prepare(DataConfig(dataset="digits"), str(digits_set), log=quiet)
    assert status == "verified" and {p.name: p.stat().st_mtime_ns for p in digits_set.iterdir()} == before
    other = corrupt_copy(digits_set, tmp_path / "again")
    _, status = prepare(DataConfig(dataset="digits"), str(other), force=True, log=quiet)
    assert status == "written"
    with pytest.raises(DataError, match="holds digits, not cifar10; use --force"):
        prepare(DataConfig(dataset="cifar10"), str(other), log=quiet)


def test_ffcv_reads_exactly_the_raw_split(digits_set):
    cfg = DataConfig(dataset="digits", beton=str(digits_set), val_size=200)
    ffcv, mem = open_data(cfg, log=quiet), open_data(DataConfig(dataset="digits", loader="memory", val_size=200))
    assert isinstance(ffcv, BetonSource) and isinstance(mem, MemorySource)
    assert ffcv.counts == mem.counts and ffcv.image_shape == mem.image_shape == (1, 8, 8)
    for split, limit in (("test", None), ("val", 130)):
        a = list(ffcv.loader(split, 100, limit=limit))
        b = list(mem.loader(split, 100, limit=limit))
        assert [len(y) for _, y in a] == [len(y) for _, y in b]  # the last partial batch is kept
        xa, ya = torch.cat([x for x, _ in a]), torch.cat([y for _, y in a])
        xb, yb = torch.cat([x for x, _ in b]), torch.cat([y for _, y in b])
        assert xa.dtype == torch.float32 and ya.dtype == torch.int64 and xa.is_contiguous()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)  # raw storage: bit for bit, scaled to [0, 1]


def test_train_order_is_seeded_per_epoch_and_drops_the_last_batch(digits_set):
    src = open_data(DataConfig(dataset="digits", beton=str(digits_set), val_size=200), log=quiet)
    ld = src.loader("train", 64, train=True, seed=3)
    assert len(ld) == 1200 // 64

    def epoch(loader, e):
        loader.set_epoch(e)
        batches = list(loader)
        assert all(len(y) == 64 for _, y in batches)
        return torch.cat([x.flatten(1) for x, _ in batches]), torch.cat([y for _, y in batches])

    x0, y0 = epoch(ld, 0)
    x1, y1 = epoch(ld, 1)
    again = src.loader("train", 64, train=True, seed=3)  # a new loader, as after a restart
    x0b, y0b = epoch(again, 0)
    assert torch.equal(x0, x0b) and torch.equal(y0, y0b) and not torch.equal(y0, y1)
    assert len(y0) == 1152 and x0.min() >= 0 and x0.max() <= 1
    # every epoch is a permutation of (a subset of) the split: the label histogram fits inside the split's
    full = torch.bincount(load_splits(DataConfig(dataset="digits")).train.y, minlength=10)
    assert (torch.bincount(y1, minlength=10) <= full).all()


def test_real_formats_prepare_and_read_back(tmp_path):
    write_cifar(tmp_path / "cifar", n_per_batch=8, n_test=6)
    write_svhn(tmp_path / "svhn", n_train=16, n_test=8)
    write_stl(tmp_path / "stl", n_train=6, n_test=3)
    for name, root, val in (("cifar10", "cifar", 10), ("svhn", "svhn", 4), ("stl10", "stl", 2)):
        cfg = DataConfig(dataset=name, root=str(tmp_path / root), val_size=val)
        m, _ = prepare(cfg, str(tmp_path / f"{name}-beton"), log=quiet)
        raw = load_splits(cfg)
        assert [m.count(s) for s in ("train", "val", "test")] == [len(raw.train), len(raw.val), len(raw.test)]
        assert m.image_shape == list(raw.image_shape) and m.augment == raw.augment
        src = open_data(DataConfig(dataset=name, beton=str(tmp_path / f"{name}-beton"), val_size=val), log=quiet)
        for split in ("val", "test"):
            x, y = next(iter(src.loader(split, 64)))
            part = getattr(raw, split)
            assert torch.equal(x, part.x.float() / 255) and torch.equal(y, part.y)


def crops_and_flips(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Every pad-``pad`` crop of every image, flipped and not: [N·(2p+1)²·2, C·H·W]."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    out = []
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            crop = padded[:, :, oy:oy + h, ox:ox + w]
            out += [crop, crop.flip(-1)]
    return torch.cat(out).flatten(1)


def test_cifar_train_augmentation_is_the_reference_crop_and_flip(tmp_path):
    write_cifar(tmp_path, n_per_batch=8, n_test=2)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), val_size=8)
    prepare(cfg, str(tmp_path / "b"), log=quiet)
    src = open_data(DataConfig(dataset="cifar10", beton=str(tmp_path / "b"), val_size=8, workers=1), log=quiet)
    assert src.augment == "crop_flip"
    originals = load_splits(cfg).train.x.float() / 255
    candidates = crops_and_flips(originals, 4)
    ld = src.loader("train", 16, train=True, seed=0)
    seen_shift = False
    for e in range(3):
        ld.set_epoch(e)
        for x, _ in ld:
            flat = x.flatten(1)
            for img in flat:
                assert (candidates == img).all(1).any(), "an augmented image is not a pad-4 crop/flip of the data"
            seen_shift |= not all((originals.flatten(1) == img).all(1).any() for img in flat)
    assert seen_shift  # the augmentation is on
    plain = open_data(DataConfig(dataset="cifar10", beton=str(tmp_path / "b"), val_size=8, augment=False),
                      log=quiet)
    assert plain.augment is None


def test_damaged_sets_fail_with_one_clear_message(digits_set, tmp_path, capsys):
    def check(folder, pattern):
        with pytest.raises(DataError, match=pattern):
            open_prepared(DataConfig(dataset="digits", beton=str(folder), val_size=200), log=quiet)

    flipped = corrupt_copy(digits_set, tmp_path / "flipped")
    with open(flipped / "train.beton", "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0xFF]))
    check(flipped, "train.beton does not match its manifest checksum")
    cut = corrupt_copy(digits_set, tmp_path / "cut")
    with open(cut / "val.beton", "r+b") as f:
        f.truncate(1000)
    check(cut, "val.beton is truncated or altered: 1000 bytes")
    gone = corrupt_copy(digits_set, tmp_path / "gone")
    (gone / "test.beton").unlink()
    check(gone, "test.beton is missing")
    check(tmp_path / "nothing", "holds no prepared data set .*oat data prepare")
    bad = corrupt_copy(digits_set, tmp_path / "badjson")
    (bad / MANIFEST).write_text("{not json")
    check(bad, "manifest.json is not valid JSON")

    # a file whose checksum matches (the manifest was rewritten to fit) but is no .beton: FFCV's reader fails
    junk = corrupt_copy(digits_set, tmp_path / "junk")
    (junk / "val.beton").write_bytes(os.urandom(4096))
    m = json.loads((junk / MANIFEST).read_text())
    m["files"]["val"].update(bytes=4096, sha256=sha256_file(junk / "val.beton"))
    (junk / MANIFEST).write_text(json.dumps(m))
    src = open_data(DataConfig(dataset="digits", beton=str(junk), val_size=200), log=quiet)
    with pytest.raises(DataError, match="val.beton is not a readable .beton file"):
        src.loader("val", 10)

    # through the CLI: exit 2, one line, nothing trained
    rc = main(["train", "jobs/digits_oat.yaml", "--out", str(tmp_path / "run"), "--quiet",
               "--set", f"data.beton={flipped}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "does not match its manifest checksum" in err
    assert not (tmp_path / "run" / "latest.pt").exists()


def test_a_set_for_another_job_is_refused(digits_set):
    with pytest.raises(DataError, match="prepared with val_size=200, not 300"):
        open_prepared(DataConfig(dataset="digits", beton=str(digits_set), val_size=300), log=quiet)
    with pytest.raises(DataError, match="holds digits, not svhn"):
        open_prepared(DataConfig(dataset="svhn", beton=str(digits_set), val_size=200), log=quiet)


def test_cli_prepare_twice_and_unknown_dataset(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "prepare", "--dataset", "digits", "--out", str(out)]) == 0
    assert "digits (train 1200, val 200, test 397; 1×8×8, 10 classes) written" in capsys.readouterr().out
    assert main(["data", "prepare", "--dataset", "digits", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("verified")
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--dataset", "imagenet", "--out", str(out)])
    assert exc.value.code == 2
    names = "digits, mnist5k, cifar10, svhn, stl10"
    assert f"invalid choice: 'imagenet' (choose from {names})" in capsys.readouterr().err.replace(
        "'digits', 'mnist5k', 'cifar10', 'svhn', 'stl10'", names)
    rc = main(["data", "prepare", "--dataset", "cifar10", "--root", str(tmp_path / "none"), "--out", str(out / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "CIFAR-10 not found" in err and not (out / "c").exists()


def test_auto_prepared_cache_is_reused(oat_cache):
    cfg = DataConfig(dataset="digits", val_size=150)
    logs: list[str] = []
    first = open_prepared(cfg, log=logs.append)
    assert first.folder == oat_cache / "prepared" / "digits-val150" and any("preparing" in m for m in logs)
    logs.clear()
    again = open_prepared(cfg, log=logs.append)
    assert again.folder == first.folder and not any("preparing" in m for m in logs)
    assert again.manifest.files == first.manifest.files


# ---------------------------------------------------------------------------------------------- DDP
def _rank_epochs(rank: int, world: int, store: str, beton: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        src = open_data(DataConfig(dataset="svhn", beton=beton, val_size=4, workers=1), log=quiet)
        ld = src.loader("train", 4, train=True, seed=11, rank=rank, world_size=world)
        res = {}
        for e in (0, 1):
            ld.set_epoch(e)
            res[e] = torch.cat([x for x, _ in ld])
        ld.set_epoch(0)  # a "resumed" pass over epoch 0
        res[2] = torch.cat([x for x, _ in ld])
        torch.save(res, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.integration
def test_distributed_shards_are_disjoint_and_reseeded_each_epoch(tmp_path):
    write_svhn(tmp_path, n_train=36, n_test=4)
    cfg = DataConfig(dataset="svhn", root=str(tmp_path), val_size=4)
    prepare(cfg, str(tmp_path / "b"), log=quiet)
    torch.multiprocessing.spawn(_rank_epochs, args=(2, str(tmp_path / "store"), str(tmp_path / "b"), str(tmp_path)),
                                nprocs=2, join=True)
    train = load_splits(cfg).train.x.float().flatten(1) / 255  # 32 distinct random images
    index = {bytes(np.asarray(row).tobytes()): i for i, row in enumerate(train.numpy())}

    def ids(t):
        return [index[bytes(row.numpy().tobytes())] for row in t.flatten(1)]

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for e in (0, 1):
        a, b = ids(r0[e]), ids(r1[e])
        assert len(a) == len(b) == 16 and not set(a) & set(b) and sorted(a + b) == list(range(32))
    assert ids(r0[0]) != ids(r0[1])  # a fresh order every epoch
    assert ids(r0[2]) == ids(r0[0]) and ids(r1[2]) == ids(r1[0])  # epoch restored: the same order again


@pytest.mark.integration
def test_the_loader_keeps_torchs_thread_count_and_ffcv_its_tables(digits_set):
    """Importing FFCV sets torch's intra-op threads to 1 (its compiler's default). The training step must keep
    the threads it was given: in a fresh process (the import happens once per process), building and iterating
    a loader leaves torch's thread count as it was.

    The same process checks what ``import_ffcv`` relies on to skip numba's typed-dict compilation (5 s per
    process): FFCV's JPEG/raw mode table holds the same codes as a plain dict, numba's ``Dict`` is itself again
    afterwards, and the only FFCV modules that bound the plain one are rgb_image (which reads the table in Python)
    and memory_managers.base (which imports the name and never uses it)."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2)\n"
            "from pipeline.data import open_data\nfrom pipeline.config import DataConfig\n"
            f"d = open_data(DataConfig(dataset='digits', beton={str(digits_set)!r}))\n"
            "ld = d.loader('train', 64, device=torch.device('cpu'), train=True)\n"
            "seen = [torch.get_num_threads()]\nfor x, y in ld:\n    seen.append(torch.get_num_threads())\n"
            "import sys, inspect, numba.typed, ffcv.fields.rgb_image as rgb, ffcv.memory_managers.base as mm\n"
            "plain = sorted(n for n, m in list(sys.modules.items()) if n.startswith('ffcv') and "
            "getattr(m, 'Dict', None) is dict)\n"
            "print(plain, numba.typed.Dict.__module__, type(rgb.IMAGE_MODES).__name__, dict(rgb.IMAGE_MODES), "
            "inspect.getsource(mm).count('Dict'))\n"
            "print(sorted(set(seen)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    tables, threads = r.stdout.strip().splitlines()[-2:]
    assert threads == "[2]", r.stdout
    assert tables == ("['ffcv.fields.rgb_image', 'ffcv.memory_managers.base'] numba.typed.typeddict dict "
                      "{'jpg': 0, 'raw': 1} 1"), tables
