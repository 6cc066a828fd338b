"""Data loaders, including the torchvision-format loaders on tiny files in the real on-disk formats."""

import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from cnn_redundancy import DatasetNotFoundError, load_dataset, subset
from cnn_redundancy.core.batches import as_loader, sample_shape
from cnn_redundancy.data import guess_dataset


def test_mnist5k_split_is_fixed_stratified_and_disjoint():
    tr, te = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    assert len(tr) == 4000 and len(te) == 1000 and len(load_dataset("mnist5k", "all")) == 5000
    assert tr.input_shape == (1, 28, 28)
    assert te.labels.bincount().tolist() == [100] * 10
    x, y = te[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= int(y) <= 9
    again = load_dataset("mnist5k", "test")
    assert torch.equal(again.images, te.images)
    other = load_dataset("mnist5k", "test", seed=1)
    assert not torch.equal(other.images, te.images)
    # train and test are disjoint: no test image appears in train
    tr_set = {bytes(im.numpy().tobytes()) for im in tr.images}
    assert sum(bytes(im.numpy().tobytes()) in tr_set for im in te.images) <= 2  # real MNIST has rare duplicates


def test_mnist5k_normalization():
    raw = load_dataset("mnist5k", "test", normalize=False)
    x = torch.stack([raw[i][0] for i in range(50)])
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9


def test_digits():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and len(te) == 360
    assert sample_shape(te) == (1, 8, 8)


def _write_idx(path, arr: np.ndarray, magic: int):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for d in arr.shape:
            f.write(struct.pack(">I", d))
        f.write(arr.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    tr = load_dataset("mnist", "train", root=tmp_path)
    te = load_dataset("mnist", "test", root=tmp_path)
    assert len(tr) == 12 and len(te) == 5 and len(load_dataset("mnist", "all", root=tmp_path)) == 17
    assert te.labels.tolist() == [0, 1, 2, 3, 4] and tr.input_shape == (1, 28, 28)
    assert guess_dataset(tmp_path) == "mnist"


def test_missing_files_give_one_clear_line(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"mnist: files not found in .*MNIST/raw"):
        load_dataset("mnist", "train", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"cifar10: missing data_batch_1.*cifar-10-batches-py"):
        load_dataset("cifar10", "train", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="pass root="):
        load_dataset("cifar100", "test")
    with pytest.raises(DatasetNotFoundError, match="not a folder"):
        load_dataset("imagefolder", "train", root=tmp_path / "nope")


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_and_cifar100_from_pickle_batches(tmp_path):
    rng = np.random.default_rng(0)
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(1, 6):
        _pickle(c10 / f"data_batch_{i}", {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [i % 10] * 4})
    _pickle(c10 / "test_batch", {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [7, 8, 9]})
    _pickle(c10 / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    tr, te = load_dataset("cifar10", "train", root=tmp_path), load_dataset("cifar10", "test", root=tmp_path)
    assert len(tr) == 20 and len(te) == 3 and te.labels.tolist() == [7, 8, 9]
    assert te.input_shape == (3, 32, 32) and te.classes[7] == "c7"
    assert guess_dataset(tmp_path) == "cifar10"
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    for part, n in (("train", 6), ("test", 2)):
        _pickle(c100 / part, {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": list(range(90, 90 + n)), b"coarse_labels": [0] * n})
    _pickle(c100 / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    te100 = load_dataset("cifar100", "test", root=tmp_path)
    assert te100.labels.tolist() == [90, 91] and te100.classes[91] == "f91"
    x, _ = te100[0]
    assert x.shape == (3, 32, 32)


def test_imagefolder_with_and_without_split_folders(tmp_path):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            d = tmp_path / "split" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(d / f"{i}.png")
    te = load_dataset("imagefolder", "test", root=tmp_path / "split", image_size=(8, 8), grayscale=True)
    assert len(te) == 6 and te[0][0].shape == (1, 8, 8)
    for cls in ("a", "b"):
        d = tmp_path / "flat" / cls
        d.mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(d / f"{i}.png")
    tr = load_dataset("imagefolder", "train", root=tmp_path / "flat")
    te = load_dataset("imagefolder", "test", root=tmp_path / "flat")
    assert len(tr) + len(te) == 10 and len(te) == 2 and te[0][0].shape == (3, 6, 6)


def test_imagefolder_splits_share_one_class_list_and_all_reads_both(tmp_path):
    """root/train and root/test: 'all' is both splits with their classes' labels (it read train/ and test/ as
    two classes), a class missing from one split keeps its label in the other, and a split that is
    not there is one clear error (it read root/ with train/ and test/ as its classes)."""
    from cnn_redundancy.data import DatasetNotFoundError

    for split, classes in (("train", ("ant", "bee", "cat")), ("test", ("ant", "cat"))):
        for k, cls in enumerate(classes):
            d = tmp_path / "split" / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((6, 6, 3), 30 * k + i, dtype=np.uint8)).save(d / f"{i}.png")
    root = tmp_path / "split"
    tr = load_dataset("imagefolder", "train", root=root)
    te = load_dataset("imagefolder", "test", root=root)
    both = load_dataset("imagefolder", "all", root=root)
    assert tr.classes == te.classes == both.classes == ["ant", "bee", "cat"]
    assert sorted(int(te[i][1]) for i in range(len(te))) == [0, 0, 2, 2]  # cat is 2 here too, not 1
    assert len(both) == 10 and sorted(int(both[i][1]) for i in range(10)) == [0] * 4 + [1] * 2 + [2] * 4
    only_train = tmp_path / "only_train"
    (only_train / "train").mkdir(parents=True)
    (root / "train" / "ant").rename(only_train / "train" / "ant")
    with pytest.raises(DatasetNotFoundError, match=r"holds train/ but no test/ folder: choose the split train"):
        load_dataset("imagefolder", "test", root=only_train)
    assert len(load_dataset("imagefolder", "all", root=only_train)) == 2


def _pngs(folder, n=2, value=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((6, 6, 3), value + i, dtype=np.uint8)).save(folder / f"{i}.png")


def test_imagefolder_numbers_classes_as_a_model_trained_on_train_expects(tmp_path):
    """The training split's classes keep ImageFolder's numbers (a class only test/ has comes after them,
    not sorted in before them); 'all' has the labels' targets; ambiguous layouts are one clear error."""
    from torchvision.datasets import ImageFolder

    from cnn_redundancy.data import DatasetNotFoundError, majority_rate

    root = tmp_path / "r"
    for split, classes in (("train", ("bee", "cat")), ("test", ("ant", "bee", "cat"))):
        for cls in classes:
            _pngs(root / split / cls)
    tr = load_dataset("imagefolder", "train", root=root)
    assert tr.class_to_idx == {**ImageFolder(str(root / "train")).class_to_idx, "ant": 2}
    te = load_dataset("imagefolder", "test", root=root)
    assert sorted(int(te[i][1]) for i in range(len(te))) == [0, 0, 1, 1, 2, 2]
    every = load_dataset("imagefolder", "all", root=root)
    assert len(every) == 10 and majority_rate(every) == pytest.approx(0.4)
    flat = tmp_path / "flat"  # a class named test beside others: not split folders
    _pngs(flat / "cat" / "sub")
    _pngs(flat / "test" / "sub")
    with pytest.raises(DatasetNotFoundError, match=r"holds split folders \(test\) beside others \(cat\)"):
        load_dataset("imagefolder", "all", root=flat)
    loose = tmp_path / "loose"  # train/ holding images, not class folders
    _pngs(loose / "train")
    with pytest.raises(DatasetNotFoundError, match=r"train holds no class folders"):
        load_dataset("imagefolder", "train", root=loose)


def test_imagefolder_leaves_out_hidden_folders_and_files(tmp_path):
    """A notebook's .ipynb_checkpoints, a zip's __MACOSX and macOS's ._x.png files are not classes or images
    (ImageFolder numbered .ipynb_checkpoints as class 0, shifting every label by one); an empty class
    folder is one clear error."""
    from cnn_redundancy.data import DatasetNotFoundError

    for k, cls in enumerate(("ant", "bee")):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 6, 3), 40 * k + i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    for junk in (".ipynb_checkpoints", "__MACOSX", "bee/__MACOSX"):
        (tmp_path / junk).mkdir(exist_ok=True)
        Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(tmp_path / junk / "copy.png")
    (tmp_path / "ant" / "._0.png").write_bytes(b"resource fork, not an image")
    ds = load_dataset("imagefolder", "all", root=tmp_path)
    assert ds.classes == ["ant", "bee"] and len(ds) == 4
    assert sorted(int(ds[i][1]) for i in range(4)) == [0, 0, 1, 1]
    (tmp_path / "cat").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"no image in the class folder .*cat: add images or remove it"):
        load_dataset("imagefolder", "all", root=tmp_path)


def test_a_broken_image_is_named(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((6, 6, 3), 50 * i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    good = (tmp_path / "a" / "0.png").read_bytes()
    (tmp_path / "a" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "b" / "2.png").write_text("not an image")  # another file under an image's name
    ds = load_dataset("imagefolder", "all", root=tmp_path)
    assert ds[0][0].shape == (3, 6, 6)
    with pytest.raises(ValueError, match=r"imagefolder: .*a/1.png is not a readable image \(.*\): replace or remove it"):
        ds[1]
    with pytest.raises(ValueError, match=r"imagefolder: .*b/2.png is not a readable image"):
        ds[5]


def test_a_root_names_its_data_set(tmp_path):
    for name, inside in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("mnist", "MNIST/raw"),
                         ("imagefolder", "cat")):  # fmt: skip
        (tmp_path / name / inside).mkdir(parents=True)
        assert guess_dataset(tmp_path / name) == name
    with pytest.raises(DatasetNotFoundError, match="not a folder"):
        guess_dataset(tmp_path / "nope")
    # a bundled set given a root would silently ignore it: refused, naming what the root holds
    with pytest.raises(ValueError, match="mnist5k is bundled and reads no root; .*: cifar100"):
        load_dataset("mnist5k", "train", root=tmp_path / "cifar100")
    with pytest.raises(ValueError, match="digits is bundled"):
        load_dataset("digits", "test", root=tmp_path / "nope")


def test_bad_names_and_empty_data():
    with pytest.raises(ValueError, match="Unknown data set 'mnits'"):
        load_dataset("mnits")
    with pytest.raises(ValueError, match="split must be"):
        load_dataset("mnist5k", "val")
    with pytest.raises(ValueError, match="empty"):
        as_loader(torch.utils.data.TensorDataset(torch.zeros(0, 1, 4, 4), torch.zeros(0)))
    with pytest.raises(TypeError, match="Dataset or DataLoader"):
        as_loader([1, 2, 3])


def test_subset_is_seeded():
    te = load_dataset("mnist5k", "test")
    a, b, c = subset(te, 50, seed=0), subset(te, 50, seed=0), subset(te, 50, seed=1)
    assert len(a) == 50 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert subset(te, None) is te


class _WritesAFile:
    """What a crafted batch file could hold: unpickling it would call pathlib.Path.write_text."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return pathlib.Path.write_text, (pathlib.Path(self.path), "pwned")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batches_are_read_without_running_code(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:  # the real format: a dict of bytes keys, numpy data, label list
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"data": data, b"labels": [1, 2, 3],
                     b"filenames": [b"a.png", b"b.png", b"c.png"]}, f, protocol=protocol)  # fmt: skip
    te = load_dataset("cifar10", "test", root=tmp_path)
    assert te.labels.tolist() == [1, 2, 3] and torch.equal(te.images.reshape(3, -1), torch.from_numpy(data))
    marker = tmp_path / "pwned.txt"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _WritesAFile(marker), b"labels": [0]}, f, protocol=protocol)
    with pytest.raises(ValueError, match=r"not a readable CIFAR batch file: refused .*a data batch holds only"):
        load_dataset("cifar10", "test", root=tmp_path)
    assert not marker.exists()


def test_subset_refuses_a_non_positive_limit():
    te = load_dataset("digits", "test")
    for n in (-995, 0):
        with pytest.raises(ValueError, match=f"limit must be a positive number of samples, not {n}"):
            subset(te, n)


def test_normalize_options(tmp_path):
    raw = load_dataset("digits", "test", normalize="none")
    custom = load_dataset("digits", "test", normalize="0.5,0.25")
    assert torch.allclose(custom[0][0], (raw[0][0] - 0.5) / 0.25)
    with pytest.raises(ValueError, match="3 means for images with 1 channel"):
        load_dataset("digits", "test", normalize="imagenet")
    with pytest.raises(ValueError, match="normalize must be 'imagenet', 'none' or 'mean,std'"):
        load_dataset("digits", "test", normalize="0.5")
    d = tmp_path / "imgs" / "a"
    d.mkdir(parents=True)
    Image.fromarray(np.full((10, 14, 3), 255, dtype=np.uint8)).save(d / "0.png")
    x = load_dataset("imagefolder", "all", root=tmp_path / "imgs", normalize="imagenet", image_size=6)[0][0]
    assert x.shape == (3, 6, 6)  # one number: square
    assert torch.allclose(x[:, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


def test_majority_rate_reads_the_labels_through_subsets_without_loading_images(tmp_path, monkeypatch):
    from cnn_redundancy.data import majority_rate

    digits = subset(load_dataset("digits", "test"), 50, seed=2)
    assert majority_rate(digits) == float(torch.bincount(digits.labels).max()) / 50
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
    for i in range(5):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / ("a" if i < 4 else "b") / f"{i}.png")
    folder = load_dataset("imagefolder", root=str(tmp_path), split="all")

    def no_image(*a):
        raise AssertionError("an image was loaded")

    monkeypatch.setattr(type(folder), "__getitem__", no_image)
    inner = torch.utils.data.Subset(folder, [0, 3, 4])
    assert majority_rate(folder) == 0.8 and majority_rate(torch.utils.data.Subset(inner, [1, 2])) == 0.5
    assert majority_rate(torch.utils.data.TensorDataset(torch.zeros(3, 1), torch.zeros(3, 2, 2).long())) is None
    labelled = torch.utils.data.TensorDataset(torch.zeros(6, 1), torch.tensor([1, 1, 1, 0, 2, 2]))
    assert majority_rate(torch.utils.data.Subset(labelled, torch.arange(2, 6))) == 0.5  # tensor indices
    named = torch.utils.data.Subset(labelled, [0])
    named.dataset.labels = ["cat"] * 6  # class names, not class indices
    assert majority_rate(named) is None
