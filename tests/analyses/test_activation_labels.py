"""Strongest-activation labels name images by their index in the data set, for a Dataset or any loader over it."""

import pytest
import torch
from torch.utils.data import DataLoader

import cnn_redundancy as cr
from cnn_redundancy.testing import random_images


def test_a_dataloader_gives_the_dataset_answer_and_a_shuffled_one_is_refused():
    model = cr.get_model("equal_width_cnn", channels=(4, 4, 4), input_size=12, seed=0)
    data = random_images(300, (1, 12, 12), seed=2)
    ref = cr.strongest_activation_labels(model, data, feature_maps=2, top=10, progress=False)
    loaded = cr.strongest_activation_labels(model, DataLoader(data, batch_size=64), feature_maps=2, top=10, progress=False)
    assert loaded == ref and loaded.n_images == 300 and max(ref.indices) < 300
    with pytest.raises(ValueError, match="pass the Dataset or a DataLoader that does not shuffle"):
        cr.strongest_activation_labels(model, DataLoader(data, batch_size=64, shuffle=True), feature_maps=2, top=10)
    with pytest.raises(ValueError, match="top=301 images per feature map but the data set has only 300"):
        cr.strongest_activation_labels(model, DataLoader(data, batch_size=64), feature_maps=2, top=301)
    assert torch.equal(torch.tensor(ref.indices), torch.tensor(sorted(set(ref.indices))))
