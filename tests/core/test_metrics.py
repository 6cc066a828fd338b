import math

import pytest
import torch

from cnn_redundancy.core.metrics import Accuracy, Dice, cosine_per_channel, get_metric, ncc_matrix


def test_accuracy_accumulates():
    m = Accuracy()
    m.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    m.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    assert m.compute() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="empty"):
        Accuracy().compute()


def test_dice_on_known_masks():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1  # 4 foreground pixels
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, :2, :1] = 1  # 2 predicted, both correct
    logits = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    d = Dice()
    d.update(logits, target)
    assert d.compute() == pytest.approx(2 * 2 / (2 + 4))
    perfect = Dice()
    perfect.update(torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float(), target)
    assert perfect.compute() == 1.0
    binary = Dice()
    binary.update(torch.where(target[:, None] == 1, 5.0, -5.0), target)
    assert binary.compute() == 1.0
    assert get_metric("dice").name == "dice"
    with pytest.raises(ValueError, match="Unknown metric"):
        get_metric("f1")


def test_cosine_conventions():
    a = torch.randn(3, 2, 4, 4)
    assert torch.allclose(cosine_per_channel(a, a), torch.ones(3, 2, dtype=torch.float64))
    assert torch.allclose(cosine_per_channel(a, -a), -torch.ones(3, 2, dtype=torch.float64))
    z = torch.zeros(1, 1, 2, 2)
    assert cosine_per_channel(z, z).item() == 1.0
    assert cosine_per_channel(z, torch.ones(1, 1, 2, 2)).item() == 0.0


def test_cosine_against_the_formula_exactly_one_and_zero_maps():
    from cnn_redundancy.core.metrics import squared_norms

    g = torch.Generator().manual_seed(1)
    a = torch.randn(16, 8, 3, 3, generator=g)
    b = a + 0.5 * torch.randn(16, 8, 3, 3, generator=g)
    b[:, 1] = a[:, 1]  # unchanged maps: exactly 1, not merely close
    a[:, 2] = 0  # zero clean map against a non-zero perturbed one: 0
    b[:, 3] = 0  # the other way round: 0
    a[:, 4] = b[:, 4] = 0  # both zero: 1 (nothing changed)
    b[:, 5] = 1e-13  # squared norm below eps**2: counts as zero
    b[0, 6, 0, 0] = float("nan")  # a NaN shows, also where the clean map is zero
    a[0, 6] = 0
    cos = cosine_per_channel(a, b)
    want = torch.nn.functional.cosine_similarity(a.flatten(2).double(), b.flatten(2).double(), dim=-1, eps=1e-30)
    plain = [0, 7]
    torch.testing.assert_close(cos[:, plain], want[:, plain], atol=1e-6, rtol=0)
    assert (cos[:, 1] == 1.0).all() and (cos[:, 4] == 1.0).all()
    assert (cos[:, 2] == 0.0).all() and (cos[:, 3] == 0.0).all() and (cos[:, 5] == 0.0).all()
    assert cos[0, 6].isnan() and not cos[1:, 6].isnan().any()
    # the clean side computed once gives the same numbers
    assert torch.equal(cosine_per_channel(a, b, a_sq=squared_norms(a)).nan_to_num(-9), cos.nan_to_num(-9))


def test_cosine_of_maps_with_huge_or_tiny_norms_and_summed_over_samples():
    """Every map float32 holds, at any scale and any ratio of the two norms (1e-11 against 1e12: their
    squared norms' product or ratio is beyond float32's range), agrees with the float64 formula, and an
    unchanged map stays exactly 1."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(8, 3, 4, 4, generator=g)
    b = a + 0.3 * torch.randn(8, 3, 4, 4, generator=g)
    b[:, 1] = a[:, 1]
    b[:, 2] = -0.5 * a[:, 2] + 0.01 * torch.randn(8, 4, 4, generator=g)  # nearly opposite
    want = torch.nn.functional.cosine_similarity(a.flatten(2).double(), b.flatten(2).double(), dim=-1)
    want[:, 1] = 1.0
    for sa, sb in ((1e-9, 1e-9), (1.0, 1.0), (1e9, 1e9), (1e-11, 1e10), (1e12, 1e-11), (1e-11, 1e17)):
        cos = cosine_per_channel(a * sa, b * sb)
        assert cos.dtype == torch.float64
        torch.testing.assert_close(cos, want, atol=1e-6, rtol=0)
        if sa == sb:
            assert (cos[:, 1] == 1.0).all()
        summed = cosine_per_channel(a * sa, b * sb, sum_samples=True)
        assert summed.shape == (3,) and summed.dtype == torch.float64
        torch.testing.assert_close(summed, cos.sum(0), atol=1e-12, rtol=0)


def test_ncc_known_answers():
    g = torch.Generator().manual_seed(0)
    blob = torch.zeros(1, 1, 16, 16)
    blob[0, 0, 5:9, 4:9] = torch.rand(4, 5, generator=g)
    shifted = torch.roll(blob, shifts=(3, 2), dims=(2, 3))
    r = torch.cat([blob, shifted, 2 * blob + 1])
    m_max = ncc_matrix(r)
    assert m_max[0, 0] == pytest.approx(1.0) and m_max[0, 2] == pytest.approx(1.0)  # affine copy
    assert m_max[0, 1] == pytest.approx(1.0)  # shifted copy: NCC 1 with lag max
    m_zero = ncc_matrix(r, lag="zero")
    assert m_zero[0, 1] < 0.5 and m_zero[0, 2] == pytest.approx(1.0)
    assert ncc_matrix(r, max_lag=1)[0, 1] < 0.9  # the shift (3, 2) is out of reach
    assert ncc_matrix(r, max_lag=3)[0, 1] == pytest.approx(float(m_max[0, 1]))
    assert torch.allclose(m_max, m_max.T, atol=1e-9)


def test_ncc_different_sizes_and_constants():
    a = torch.zeros(2, 1, 9, 9)
    a[0, 0, 3:6, 3:6] = torch.arange(9.0).reshape(3, 3)
    b = a[:1, :, 2:7, 2:7].clone()  # the same pattern in a smaller map
    m = ncc_matrix(a, b)
    assert m.shape == (2, 1) and m[0, 0] == pytest.approx(1.0)
    assert m[1, 0] == 0.0  # a constant response correlates 0 with everything
    assert not math.isnan(float(ncc_matrix(a)[1, 1]))
    corner = torch.zeros(2, 1, 8, 8)
    corner[0, 0, 0, 0], corner[1, 0, 7, 7] = 1.0, 1.0  # would match at a one-pixel overlap
    assert ncc_matrix(corner)[0, 1] < 0.5
    with pytest.raises(ValueError, match="maps each"):
        ncc_matrix(a, torch.zeros(1, 2, 9, 9))


def test_labels_outside_the_classes_are_refused_not_counted_wrong():
    with pytest.raises(ValueError, match=r"label 10 is outside the model's 10 classes \(0..9\).*num_classes"):
        Accuracy().update(torch.zeros(3, 10), torch.tensor([0, 10, 1]))
    with pytest.raises(ValueError, match="label -1 is outside"):
        Accuracy().update(torch.zeros(2, 10), torch.tensor([-1, 0]))
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"dice: label 3 is outside the model's 3 classes"):
        Dice().update(torch.zeros(1, 3, 4, 4), target)


def test_a_dict_or_tuple_output_needs_a_selector_that_says_how():
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(TypeError, match=r"dict with keys 'out', 'aux'.*output='out'.*--output-key out"):
        Accuracy().update({"out": logits, "aux": logits}, torch.tensor([1, 0]))
    with pytest.raises(TypeError, match=r"tuple of 2 outputs.*output=0"):
        Accuracy().update((logits, logits), torch.tensor([1, 0]))
    m = get_metric("accuracy", output="out")
    m.update({"out": logits, "aux": -logits}, torch.tensor([1, 0]))
    t = Accuracy(output=1)
    t.update((-logits, logits), torch.tensor([1, 0]))
    assert m.compute() == t.compute() == 1.0
    with pytest.raises(ValueError, match="output='main' is not an output"):
        get_metric("dice", output="main").update({"out": logits}, torch.tensor([1, 0]))


def test_a_detection_models_boxes_get_one_line_not_a_selector_that_cannot_help():
    """torchvision's detectors return a list of dicts (boxes, labels, scores) per image: choosing output=0 (what the
    tuple hint said) only led to a dict of boxes, and then to output='boxes'."""
    per_image = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}] * 2
    for out, metric in ((per_image, Accuracy()), (per_image, Accuracy(output=0)), (per_image[0], Accuracy())):
        with pytest.raises(TypeError, match=r"keys 'boxes', 'labels', 'scores', as a detection model does: accuracy "
                                            r"needs one tensor of class scores.*analyze the detector's backbone"):
            metric.update(out, torch.tensor([1, 0]))
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(TypeError, match=r"dict with keys 'logits', 'boxes'.*output='logits'"):
        Accuracy().update({"logits": logits, "boxes": torch.zeros(2, 4)}, torch.tensor([1, 0]))
    m = Accuracy(output="logits")  # a model that classifies and localises: the key picks its class scores
    m.update({"logits": logits, "boxes": torch.zeros(2, 4)}, torch.tensor([1, 0]))
    assert m.compute() == 1.0


def test_accuracy_on_per_pixel_logits_names_dice():
    with pytest.raises(ValueError, match="need metric='dice'"):
        Accuracy().update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_metric_inferred_from_the_output_shape():
    import cnn_redundancy as cr
    from cnn_redundancy.core.metrics import infer_metric
    from cnn_redundancy.testing import TinyCNN, random_images

    seg = cr.get_model("pspnet_resnet", in_channels=1, num_classes=3, depths=(1, 1, 1, 1), width=4, input_size=16)
    assert infer_metric(seg, random_images(2, (1, 16, 16))) == "dice"
    assert infer_metric(TinyCNN(), random_images(2)) == "accuracy"


def test_negative_max_lag_is_refused():
    a = torch.randn(3, 1, 5, 5)
    with pytest.raises(ValueError, match="max_lag must be None or an integer >= 0, not -3"):
        ncc_matrix(a, max_lag=-3)
