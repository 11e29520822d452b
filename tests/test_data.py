"""Tests for the synthetic and folder data sets, transforms, partitions and the builder."""

import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from splitfedzip.config import DataConfig, PartitionConfig
from splitfedzip.data import (
    Augmented,
    BlastocystFolder,
    DataError,
    HAM10000Folder,
    SyntheticBlastocyst,
    SyntheticLesion,
    build_federated_data,
    client_data,
    denormalize,
    normalize,
    num_classes_for,
    partition_indices,
    segmentation_strata,
    train_val_split,
)
from splitfedzip.data.sites import write_site_folders
from splitfedzip.data.transforms import random_flip, resize_mask

# --- synthetic data sets ------------------------------------------------------------------


@pytest.mark.parametrize("cls,classes", [(SyntheticLesion, 2), (SyntheticBlastocyst, 5)])
def test_synthetic_sample_format(cls, classes):
    ds = cls(3, 64, seed=0)
    image, mask = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (64, 64) and mask.dtype == torch.int64
    raw = denormalize(image)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert set(mask.unique().tolist()) == set(range(classes))
    assert ds.num_classes == classes and len(ds) == 3
    with pytest.raises(IndexError):
        ds[3]


@pytest.mark.parametrize("cls", [SyntheticLesion, SyntheticBlastocyst])
def test_synthetic_is_deterministic_per_seed_and_index(cls):
    a, b = cls(5, 32, seed=7), cls(9, 32, seed=7)
    assert torch.equal(a[4][0], b[4][0]) and torch.equal(a[4][1], b[4][1])
    assert torch.equal(a[2][0], a[2][0])  # same answer on repeated access
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], cls(5, 32, seed=8)[0][0])
    shifted = cls(2, 32, seed=7, offset=3)
    assert torch.equal(shifted[1][0], a[4][0])


def test_synthetic_generation_is_fast():
    ds = SyntheticLesion(40, 128, seed=0)
    start = time.perf_counter()
    for i in range(40):
        ds.raw(i)
    assert (time.perf_counter() - start) / 40 < 0.02  # about 2 ms on one core


def test_synthetic_tasks_are_not_solved_by_intensity_alone():
    # Lesion: the best global darkness threshold stays well short of perfect.
    samples = [SyntheticLesion(30, 64, seed=1).raw(i) for i in range(30)]
    best = 0.0
    for t in np.linspace(0.1, 0.9, 33):
        scores = []
        for image, mask in samples:
            pred, truth = image.mean(0) < t, mask > 0
            scores.append((pred & truth).sum() / max((pred | truth).sum(), 1))
        best = max(best, float(np.mean(scores)))
    assert 0.3 < best < 0.85
    # Blastocyst: even with each image's true class means, nearest-mean labelling is poor.
    scores = []
    for i in range(10):
        image, mask = SyntheticBlastocyst(10, 64, seed=1).raw(i)
        grey = image[0]
        means = np.array([grey[mask == c].mean() for c in range(5)])
        pred = np.abs(grey[..., None] - means).argmin(-1)
        scores.append(
            np.mean(
                [
                    ((pred == c) & (mask == c)).sum() / ((pred == c) | (mask == c)).sum()
                    for c in range(1, 5)
                ]
            )
        )
    assert np.mean(scores) < 0.5


def test_blastocyst_layout_is_nested():
    _, mask = SyntheticBlastocyst(1, 128, seed=3).raw(0)
    centre_row = mask[64]
    # Walking in from the left edge: background, then ZP, then TE before the interior.
    first = {c: int(np.argmax(centre_row == c)) for c in (1, 2)}
    assert centre_row[0] == 0 and first[1] < first[2]


# --- transforms ---------------------------------------------------------------------------


def test_random_flip_moves_image_and_mask_together_and_uses_given_generator():
    mask = torch.arange(16).view(4, 4) % 5
    image = normalize(mask.float().expand(3, 4, 4) / 4)
    state = np.random.get_state()
    seen = set()
    for seed in range(8):
        img, msk = random_flip(image, mask, np.random.default_rng(seed))
        assert torch.allclose(denormalize(img)[0] * 4, msk.float(), atol=1e-5)
        seen.add(tuple(msk.flatten().tolist()))
    assert len(seen) > 1
    assert np.all(np.random.get_state()[1] == state[1])  # global RNG untouched
    a = random_flip(image, mask, np.random.default_rng(5))[1]
    assert torch.equal(a, random_flip(image, mask, np.random.default_rng(5))[1])


def test_augmented_wrapper():
    ds = SyntheticLesion(4, 32, seed=0)
    plain = Augmented(ds, np.random.default_rng(0), augment=False)
    assert torch.equal(plain[1][0], ds[1][0]) and len(plain) == 4
    flipped = Augmented(ds, np.random.default_rng(0), augment=True)
    outs = [flipped[1][1] for _ in range(8)]
    assert any(not torch.equal(o, ds[1][1]) for o in outs)


def test_normalize_round_trip_and_mask_resize():
    x = torch.rand(3, 5, 5)
    assert torch.allclose(denormalize(normalize(x)), x, atol=1e-6)
    mask = np.array([[0, 4], [2, 3]], dtype=np.uint8)
    assert set(np.unique(resize_mask(mask, 7)).tolist()) == {0, 2, 3, 4}


# --- folder data sets ---------------------------------------------------------------------


def _ham_folder(root, n=4, size=(40, 30), images="images", masks="masks"):
    (root / images).mkdir(parents=True)
    (root / masks).mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", size, (200, 150, 120)).save(root / images / f"ISIC_{i:07d}.jpg")
        m = np.zeros(size[::-1], dtype=np.uint8)
        m[5:20, 10:30] = 255
        m[0, 0] = 90  # below the threshold: background
        Image.fromarray(m).save(root / masks / f"ISIC_{i:07d}_segmentation.png")
    return root


def _blasto_folder(root, n=3, size=(24, 24), levels=(0, 64, 105, 128, 192, 226, 255)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(n):
        Image.new("L", size, 120).save(root / "images" / f"embryo{i}.bmp")
        m = np.zeros(size[::-1], dtype=np.uint8)
        for j, level in enumerate(levels):
            m[:, j * 3 : j * 3 + 3] = level
        Image.fromarray(m).save(root / "masks" / f"embryo{i}.bmp")
    return root


def test_ham_folder_reads_and_resizes(tmp_path):
    ds = HAM10000Folder(_ham_folder(tmp_path), 32)
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and len(ds) == 4
    assert set(mask.unique().tolist()) == {0, 1}
    assert ds.load_mask(0).shape == (32, 32)


def test_ham_folder_accepts_isic_layout(tmp_path):
    root = _ham_folder(
        tmp_path,
        images="ISIC2018_Task1-2_Training_Input",
        masks="ISIC2018_Task1_Training_GroundTruth",
    )
    assert len(HAM10000Folder(root, 16)) == 4


def test_blastocyst_folder_maps_grey_levels(tmp_path):
    root = _blasto_folder(tmp_path)
    mask = BlastocystFolder(root, 24).load_mask(0)  # native size: no resampling
    assert mask[0, ::3].tolist() == [0, 1, 1, 2, 3, 3, 4, 0]
    image, resized = BlastocystFolder(root, 16)[1]
    assert image.shape == (3, 16, 16) and set(resized.unique().tolist()) == set(range(5))


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        HAM10000Folder(tmp_path / "nowhere", 16)
    root = _ham_folder(tmp_path / "a")
    (root / "masks" / "ISIC_0000002_segmentation.png").unlink()
    with pytest.raises(FileNotFoundError, match="ISIC_0000002"):
        HAM10000Folder(root, 16)
    root = _blasto_folder(tmp_path / "b")
    Image.new("L", (10, 10)).save(root / "masks" / "embryo1.bmp")
    with pytest.raises(ValueError, match=r"embryo1\.bmp.*mask.*10x10"):
        BlastocystFolder(root, 16)[1]
    root = _blasto_folder(tmp_path / "c", levels=(0, 77, 128))
    with pytest.raises(ValueError, match=r"embryo0\.bmp.*found \[0, 77, 128\]"):
        BlastocystFolder(root, 16)[0]
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        BlastocystFolder(tmp_path / "d", 16)
    (tmp_path / "e").mkdir()
    with pytest.raises(FileNotFoundError, match="no folder found; tried .*images"):
        BlastocystFolder(tmp_path / "e", 16)


# --- partitions ---------------------------------------------------------------------------


def _check_disjoint(parts, n):
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) and all(0 <= i < n for i in flat)


def test_counts_partition():
    parts = partition_indices(30, PartitionConfig(kind="counts", counts=[10, 3, 7]), seed=0)
    assert [len(p) for p in parts] == [10, 3, 7]
    _check_disjoint(parts, 30)
    assert parts == partition_indices(30, PartitionConfig(kind="counts", counts=[10, 3, 7]), 0)
    with pytest.raises(ValueError, match="sum to 21 but only 20"):
        partition_indices(20, PartitionConfig(kind="counts", counts=[10, 4, 7]), seed=0)


def test_iid_partition():
    parts = partition_indices(23, PartitionConfig(kind="iid", clients=4), seed=1)
    assert sorted(len(p) for p in parts) == [5, 6, 6, 6]
    _check_disjoint(parts, 23)
    assert sum(map(len, parts)) == 23
    with pytest.raises(ValueError, match="cannot give 4 clients"):
        partition_indices(7, PartitionConfig(kind="iid", clients=4), seed=1)


def test_dirichlet_partition_skews_labels_and_feeds_every_client():
    strata = [i % 4 for i in range(200)]
    cfg = PartitionConfig(kind="dirichlet", clients=5, alpha=0.1)
    parts = partition_indices(200, cfg, seed=3, strata=strata)
    assert len(parts) == 5 and min(map(len, parts)) >= 2
    _check_disjoint(parts, 200)
    assert sum(map(len, parts)) == 200
    assert parts == partition_indices(200, cfg, seed=3, strata=strata)
    # With small alpha, some client is dominated by one stratum (IID would give ~25 %).
    shares = [np.bincount([strata[i] for i in p], minlength=4).max() / len(p) for p in parts]
    assert max(shares) > 0.6
    # Even an extreme alpha with few samples leaves every client 2 samples.
    tight = partition_indices(10, PartitionConfig("dirichlet", 5, None, 0.01), 0, [0] * 10)
    assert min(map(len, tight)) >= 2
    with pytest.raises(ValueError, match="stratum"):
        partition_indices(10, cfg, seed=0)


def test_segmentation_strata():
    binary = [np.zeros((4, 4), int) for _ in range(4)]
    for k, m in enumerate(binary):
        m.flat[: 4 * k] = 1  # 0 %, 25 %, 50 %, 75 % foreground
    assert segmentation_strata(binary, 2, bins=2) == [0, 0, 1, 1]
    multi = [np.array([[0, 3, 3], [1, 0, 0]]), np.array([[0, 0, 0]]), np.array([[4, 4, 2]])]
    assert segmentation_strata(multi, 5) == [3, 0, 4]


def test_train_val_split():
    train, val = train_val_split(list(range(100, 340)), 0.15, seed=0)
    assert len(val) == 36 and len(train) == 204 and not set(train) & set(val)
    assert set(train) | set(val) == set(range(100, 340))
    assert train_val_split([5, 9], 0.15, seed=1)[1] in ([5], [9])
    assert train_val_split(list(range(9)), 0.15, seed=2) == train_val_split(list(range(9)), 0.15, 2)
    with pytest.raises(ValueError, match="at least 2"):
        train_val_split([1], 0.15, seed=0)


# --- builder ------------------------------------------------------------------------------


def test_build_synthetic_counts_uses_sum_of_counts():
    cfg = DataConfig(
        dataset="synthetic-blastocyst",
        image_size=32,
        num_samples=4,
        test_samples=3,
        partition=PartitionConfig(kind="counts", counts=[7, 2, 5]),
        val_fraction=0.15,
    )
    fed = build_federated_data(cfg, seed=0)
    assert fed.num_classes == 5 and len(fed.test) == 3
    assert [len(c.train) + len(c.val) for c in fed.clients] == [7, 2, 5]
    assert all(len(c.val) >= 1 for c in fed.clients)
    assert isinstance(fed.clients[0].train, Augmented) and fed.clients[0].train.augment
    assert isinstance(fed.clients[0].val, Subset)
    test_images = [fed.test[i][0] for i in range(3)]
    pool = fed.clients[0].val.dataset
    for i in range(len(pool)):
        assert not any(torch.equal(pool[i][0], t) for t in test_images)


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_build_synthetic_iid_and_dirichlet(kind):
    part = PartitionConfig(kind=kind, clients=3, alpha=0.5)
    cfg = DataConfig(image_size=32, num_samples=24, test_samples=4, partition=part, augment=False)
    fed = build_federated_data(cfg, seed=1)
    assert len(fed.clients) == 3 and fed.num_classes == 2
    assert sum(len(c.train) + len(c.val) for c in fed.clients) == 24
    assert not fed.clients[0].train.augment


def test_build_real_holds_out_test_deterministically(tmp_path):
    root = _ham_folder(tmp_path, n=12)
    part = PartitionConfig(kind="counts", counts=[3, 5])
    cfg = DataConfig(
        dataset="ham10000", root=str(root), image_size=16, test_samples=4, partition=part
    )
    a, b = build_federated_data(cfg, seed=5), build_federated_data(cfg, seed=5)
    assert a.test.indices == b.test.indices and len(a.test) == 4
    used = [i for c in a.clients for i in (*c.train.dataset.indices, *c.val.indices)]
    assert len(used) == 8 and not set(used) & set(a.test.indices)
    cfg.partition = PartitionConfig(kind="counts", counts=[3, 6])
    with pytest.raises(ValueError, match="sum to 9 but only 8"):
        build_federated_data(cfg, seed=5)


def test_num_classes_for():
    assert num_classes_for("ham10000") == 2 and num_classes_for("synthetic-blastocyst") == 5
    with pytest.raises(ValueError, match="unknown dataset"):
        num_classes_for("cityscapes")


# --- one folder per client ----------------------------------------------------------------


def test_client_folders_give_each_client_its_share_of_the_shared_root(tmp_path, lesion_folder):
    shared = DataConfig(
        dataset="ham10000", root=str(lesion_folder("all", 20)), image_size=32,
        test_samples=4, partition=PartitionConfig(kind="dirichlet", clients=2),
    )  # fmt: skip
    roots, test = write_site_folders(shared, seed=7, out=tmp_path / "sites")
    own = DataConfig(
        dataset="ham10000", client_roots=[str(r) for r in roots], test_root=str(test),
        image_size=32,
    )  # fmt: skip
    a, b = build_federated_data(shared, seed=7), build_federated_data(own, seed=7)
    assert len(a.clients) == len(b.clients) == 2
    for ours, theirs in zip(a.clients, b.clients, strict=True):
        for name in ("train", "val"):
            x, y = getattr(ours, name), getattr(theirs, name)
            assert len(x) == len(y) > 0
            for i in range(len(x)):  # same samples, order and augmentation draws
                assert all(torch.equal(s, t) for s, t in zip(x[i], y[i], strict=True))
    assert len(a.test) == len(b.test) == 4
    assert all(torch.equal(a.test[i][0], b.test[i][0]) for i in range(4))
    # A client reads its own folder and nothing else.
    mine = client_data(own, seed=7, client=1, root=roots[1])
    assert {p[0].parent.parent for p in mine.val.dataset.pairs} == {roots[1]}
    with pytest.raises(DataError, match="data.test_root"):
        build_federated_data(replace(own, test_root=None), seed=7)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate_image", r"ISIC_0000001\.jpg: not a readable image \(.*[Tt]runcated"),
        ("text_image", r"ISIC_0000001\.jpg: not a readable image \(cannot identify"),
        ("empty_mask", r"ISIC_0000001_segmentation\.png: an empty file, not an image"),
        ("corrupt_mask", r"ISIC_0000001_segmentation\.png: not a readable image"),
    ],
)
def test_a_bad_file_is_named_before_training_starts(lesion_folder, damage, message):
    root = lesion_folder("site", 3)
    image = root / "images" / "ISIC_0000001.jpg"
    mask = root / "masks" / "ISIC_0000001_segmentation.png"
    if damage == "truncate_image":
        image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    elif damage == "text_image":
        image.write_text("notes from the clinic, not a picture")
    elif damage == "empty_mask":
        mask.write_bytes(b"")
    else:
        data = bytearray(mask.read_bytes())
        data[40:60] = b"\xff" * 20  # inside the compressed pixels: zlib or CRC breaks
        mask.write_bytes(bytes(data))
    with pytest.raises(DataError, match=message):
        HAM10000Folder(root, 16)  # reading the folder, not the first batch, finds it
