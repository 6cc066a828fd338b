"""The one batch loop refuses what a model would read wrongly (wrong dtype, non-finite values) with the fix,
and shape errors say which input the model expects and how to get it."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import cnn_redundancy as cr
from cnn_redundancy.core.batches import as_loader, batches, check_batch, first_input, model_dtype
from cnn_redundancy.testing import TinyCNN, random_images


def _data(x: torch.Tensor) -> TensorDataset:
    return TensorDataset(x, torch.zeros(len(x), dtype=torch.long))


def _runs():
    """The commands of the issue (shuffle, distinctiveness, prune) plus evaluate, through the API."""
    return {
        "channel_shuffle": lambda m, d: cr.channel_shuffle(m, d, "conv2", batch_size=8, progress=False),
        "distinctiveness": lambda m, d: cr.distinctiveness(m, d, batch_size=8, progress=False),
        "prune": lambda m, d: cr.prune(m, d, steps=1, batch_size=8),
        "evaluate": lambda m, d: cr.evaluate(m, d, batch_size=8, progress=False),
    }


@pytest.mark.parametrize("run", list(_runs()))
@pytest.mark.parametrize("dtype,match", [(torch.uint8, r"uint8 .*x\.float\(\) / 255"),
                                         (torch.float64, r"float64 but the model's weights are torch\.float32: cast"),
                                         (torch.float16, r"float16 but the model's weights")])  # fmt: skip
def test_wrong_input_dtype_is_one_clear_error(run, dtype, match, unchanged):
    m = TinyCNN().eval()
    x = random_images(16).tensors[0]
    x = (x * 40 + 100).clamp(0, 255).to(dtype) if dtype == torch.uint8 else x.to(dtype)
    with unchanged(m), pytest.raises(TypeError, match=match):
        _runs()[run](m, _data(x))


@pytest.mark.parametrize("run", list(_runs()))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_names_the_sample(run, bad):
    x = random_images(16).tensors[0].clone()
    x[13, 0, 5, 5] = bad
    with pytest.raises(ValueError, match=r"sample 13 of the data \(batch 1, position 5\) has a NaN or infinite"):
        _runs()[run](TinyCNN().eval(), _data(x))


@pytest.mark.parametrize("run", ["channel_shuffle", "distinctiveness", "prune"])
def test_wrong_geometry_says_the_fix(run):
    m = TinyCNN().eval()  # declares input_shape (1, 12, 12)
    with pytest.raises(ValueError, match=r"have 3 channels, the model takes 1: --grayscale for an image folder"):
        _runs()[run](m, random_images(16, (3, 12, 12)))
    with pytest.raises(ValueError, match=r"are 20x20, the model takes 12x12: --image-size 12"):
        _runs()[run](m, random_images(16, (1, 20, 20)))


def test_check_batch_directly():
    m = TinyCNN()
    assert model_dtype(m) == torch.float32 and model_dtype(torch.nn.ReLU()) is None
    check_batch(m, torch.zeros(2, 1, 12, 12))  # a good batch passes
    check_batch(m.double(), torch.zeros(2, 1, 12, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="position 1 of a batch"):
        check_batch(m, torch.tensor([[0.0], [float("nan")]], dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast the input type is the autocast's business
        check_batch(TinyCNN(), torch.zeros(2, 1, 12, 12, dtype=torch.bfloat16))
    big = torch.full((2, 1, 12, 12), 3e38)  # finite, though their sum overflows: not refused
    assert not torch.isfinite(big.sum())
    check_batch(m.float(), big)
    big[1, 0, 3, 4] = -float("inf")  # an infinity among values whose sum is already infinite
    with pytest.raises(ValueError, match="position 1 of a batch"):
        check_batch(m, big)


def test_batches_checks_only_given_a_model_and_counts_samples_across_batches():
    x = torch.zeros(10, 1, 12, 12)
    x[7, 0, 0, 0] = float("nan")
    loader = as_loader(_data(x), 4)
    assert len(list(batches(loader, torch.device("cpu")))) == 3  # no model: no check
    with pytest.raises(ValueError, match=r"sample 7 of the data \(batch 1, position 3\)"):
        list(batches(loader, torch.device("cpu"), TinyCNN()))
    assert first_input(DataLoader(_data(x), batch_size=4), TinyCNN()).shape == (1, 1, 12, 12)


def test_fit_refuses_non_finite_training_data():
    x = random_images(8).tensors[0].clone()
    x[3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        cr.fit(TinyCNN(), _data(x), epochs=1, progress=False)
