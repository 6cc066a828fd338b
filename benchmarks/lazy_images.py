"""Random images made on access, shared by the benchmarks (imported from the scripts' own folder)."""

from __future__ import annotations

import torch


class LazyImages(torch.utils.data.Dataset):
    """Random images made on access (seeded per index, plus ``offset`` for disjoint sets), so the data set
    costs no memory."""

    def __init__(self, n: int, shape=(3, 64, 64), classes: int = 10, offset: int = 0) -> None:
        self.n, self.shape, self.classes, self.offset = n, shape, classes, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.offset + i)
        return torch.randn(*self.shape, generator=g), int(torch.randint(0, self.classes, (1,), generator=g))
