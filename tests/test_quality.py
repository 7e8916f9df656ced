"""Explanation-quality metrics on hand-built models where the right answer is known."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rai_probe.probing.quality import faithfulness, goal_met, minimality, stability


def linear(weights, bias=(0.0, 0.0)):
    """Two classes over 1 x 1 x P images: logit_1 = <w, x> + b1, logit_0 = b0."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(len(weights), 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(len(weights)), torch.tensor(weights)]))
        model[1].bias.copy_(torch.tensor(bias))
    return model.eval()


def image(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_curves_exact_on_a_linear_model():
    # pixel 0: weight 3, pixel 1: weight 1; logit_1 = 3 d0 + d1 - 2 (bias), logit_0 = 0
    model = linear([3.0, 1.0, 0.0], bias=(0.0, -2.0))
    x, delta = image([0, 0, 0]), image([1.0, 0.5, 0.0])  # two changed pixels, pixel 0 the larger
    out = faithfulness(model, x, delta, reference=torch.tensor([0]), targeted=False, points=2,
                       random_baseline=False)
    p0 = lambda z: 1 / (1 + math.exp(z))  # probability of class 0 when logit_1 - logit_0 = z
    insertion = [p0(-2), p0(3 - 2), p0(3.5 - 2)]  # m = 0, 1, 2 pixels inserted
    deletion = [p0(1.5), p0(0.5 - 2), p0(-2)]  # m = 0, 1, 2 pixels removed
    trapezoid = lambda v: (v[0] + 2 * v[1] + v[2]) / 4
    assert out["insertion_auc"].item() == pytest.approx(trapezoid(insertion))
    assert out["deletion_auc"].item() == pytest.approx(trapezoid(deletion))
    assert out["pixels_to_flip"].tolist() == [1.0]  # pixel 0 alone flips (logit diff 1 > 0)


def test_never_flipping_and_empty_perturbations_are_nan():
    model = linear([1.0, 1.0], bias=(0.0, -5.0))
    x = image([0, 0]).repeat(2, 1, 1, 1)
    delta = torch.stack([image([1.0, 1.0])[0], image([0.0, 0.0])[0]])
    out = faithfulness(model, x, delta, reference=torch.tensor([0, 0]), targeted=False, points=4)
    assert math.isnan(out["pixels_to_flip"][0]) and not math.isnan(out["insertion_auc"][0])
    assert all(math.isnan(out[key][1]) for key in out)  # no changed pixel: nothing to rank


def test_targeted_reference_is_the_target():
    model = linear([2.0, 0.0], bias=(0.0, -1.0))
    out = faithfulness(model, image([0, 0]), image([1.0, 0.2]), reference=torch.tensor([1]), targeted=True,
                       points=2, random_baseline=False)
    assert out["pixels_to_flip"].tolist() == [1.0]
    assert goal_met(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), targeted=True).tolist() == [True]


@given(n=st.integers(2, 12), seed=st.integers(0, 10_000))
def test_magnitude_order_flips_no_later_than_random_when_magnitude_is_importance(n, seed):
    """When |δ| is proportional to each pixel's weight, the explanation's own order is the best order."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(n, generator=gen) + 0.1
    model = linear(weights.tolist(), bias=(0.0, -float(weights.pow(2).sum()) / 2))
    out = faithfulness(model, image([0.0] * n), (weights / weights.max()).view(1, 1, 1, n),
                       reference=torch.tensor([0]), targeted=False, points=n, seed=seed)
    assert out["pixels_to_flip"].item() <= out["pixels_to_flip_random"].item()
    assert 1 <= out["pixels_to_flip"].item() <= n


def test_greedy_minimality_drops_what_is_not_needed():
    # logit diff = 3 d0 + 1 d1 + 0.1 d2 - 2: pixel 0 alone suffices; the greedy pass drops 2 then 1
    model = linear([3.0, 1.0, 0.1], bias=(0.0, -2.0))
    x = image([0, 0, 0])
    out = minimality(model, x, image([1.0, 0.5, 0.2]), reference=torch.tensor([0]), targeted=False)
    assert out["droppable_fraction"].tolist() == pytest.approx([2 / 3])
    assert out["minimal_delta"].flatten().tolist() == pytest.approx([1.0, 0.0, 0.0])
    needed = minimality(model, x, image([0.6, 0.5, 0.0]), reference=torch.tensor([0]), targeted=False)
    assert needed["droppable_fraction"].tolist() == [0.0]  # 1.8 + 0.5 > 2, neither alone
    failed = minimality(model, x, image([0.1, 0.1, 0.0]), reference=torch.tensor([0]), targeted=False)
    assert math.isnan(failed["droppable_fraction"][0])


def test_stability_of_identical_runs_is_one_and_of_disjoint_ones_is_zero():
    a = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    same = stability(torch.stack([a, a, a]))
    assert torch.allclose(same["stability_iou"], torch.ones(3, dtype=torch.float64))
    assert torch.allclose(same["stability_cosine"], torch.ones(3, dtype=torch.float64))
    left, right = torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4)
    left[..., :2], right[..., 2:] = 1.0, 1.0
    apart = stability(torch.stack([left, right]))
    assert apart["stability_iou"].tolist() == [0.0] and apart["stability_cosine"].tolist() == [0.0]
    with pytest.raises(ValueError, match="R >= 2"):
        stability(a.unsqueeze(0))
