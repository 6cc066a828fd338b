"""A small synthetic segmentation data set: discs and squares on noise (``load_dataset("shapes")``).

Each image is ``size x size`` grey-level noise with up to ``max_shapes`` shapes drawn brighter
than the background; the mask labels every pixel 0 (background), 1 (disc) or 2 (square). Shapes
are drawn in order, so a later shape covers an earlier one in both image and mask. Everything is
generated from ``seed``, the test split from a different stream than the train split.

Example:
    >>> ds = shapes_dataset(n=8, seed=0)
    >>> x, mask = ds[0]
    >>> tuple(x.shape), tuple(mask.shape), int(mask.max()) <= 2
    ((1, 32, 32), (32, 32), True)
"""

from __future__ import annotations

import numpy as np

from . import ArrayDataset

__all__ = ["shapes_dataset", "load_shapes", "SHAPE_CLASSES"]

SHAPE_CLASSES = ["background", "disc", "square"]


def shapes_dataset(
    n: int = 600,
    *,
    size: int = 32,
    max_shapes: int = 3,
    noise: float = 0.25,
    seed: int = 0,
) -> ArrayDataset:
    """``n`` images ``[1, size, size]`` with masks ``[size, size]`` (0 background, 1 disc, 2 square)."""
    if n < 1 or size < 8 or max_shapes < 1:
        raise ValueError("shapes_dataset needs n >= 1, size >= 8 and max_shapes >= 1")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise is a fraction of the grey range in [0, 1], got {noise}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, size, size), dtype=np.float64)
    masks = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        img = 0.3 + noise * rng.standard_normal((size, size))
        for _ in range(int(rng.integers(1, max_shapes + 1))):
            kind = int(rng.integers(1, 3))
            r = int(rng.integers(size // 10 + 2, size // 4 + 2))
            cy, cx = (int(v) for v in rng.integers(r, size - r, size=2))
            if kind == 1:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
            img[inside] = 0.7 + noise * rng.standard_normal(int(inside.sum()))
            masks[i][inside] = kind
        images[i] = img
    pixels = np.clip(images * 255.0, 0, 255).round().astype(np.uint8)
    return ArrayDataset(pixels, masks, mean=0.5, std=0.3, classes=list(SHAPE_CLASSES), name="shapes")


def load_shapes(split: str, root=None, *, seed: int = 0, n_train: int = 600, n_test: int = 200, size: int = 32, **kw) -> ArrayDataset:
    """The ``shapes`` data set's ``train`` / ``test`` / ``all`` split (``root`` is not used)."""
    train = shapes_dataset(n_train, size=size, seed=2 * seed, **kw) if split in ("train", "all") else None
    test = shapes_dataset(n_test, size=size, seed=2 * seed + 1, **kw) if split in ("test", "all") else None
    if split == "train":
        return train  # type: ignore[return-value]
    if split == "test":
        return test  # type: ignore[return-value]
    both = ArrayDataset(np.concatenate([train.images.numpy(), test.images.numpy()]),  # type: ignore[union-attr]
                        np.concatenate([train.labels.numpy(), test.labels.numpy()]),  # type: ignore[union-attr]
                        mean=0.5, std=0.3, classes=list(SHAPE_CLASSES), name="shapes")
    return both
