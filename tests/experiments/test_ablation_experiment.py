"""The zero-ablation reproduction chooses branches to remove on one half of the test split and verifies
on the other: both halves must be draws of the same distribution (the split is sorted by class)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from cnn_redundancy.experiments import ablation


class _Stop(Exception):
    pass


def test_trivial_branches_are_chosen_and_verified_on_random_halves(tmp_path, monkeypatch):
    seen = {}

    def fake_remove_trivial(model, check, **kw):
        seen["check"] = [int(check[i][1]) for i in range(len(check))]
        raise _Stop

    monkeypatch.setattr(ablation, "remove_trivial", fake_remove_trivial)
    monkeypatch.setattr(ablation, "save_figure", lambda fig, path: plt.close(fig))
    with pytest.raises(_Stop):
        ablation.run(tmp_path, quick=True)
    labels = seen["check"]
    assert len(labels) == 32  # half of the quick run's 64 test images
    assert len(set(labels)) >= 8 and sum(y >= 5 for y in labels) >= 8  # not only the first classes
