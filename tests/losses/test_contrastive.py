import math

import pytest
import torch

from src.losses.contrastive import supcon_loss


def test_hand_computed_value_with_unit_temperature():
    # rows 0, 1, 2 share label 0, row 3 is alone; lengths differ to check the normalisation inside
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.5, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    # cosine similarities: s01 = 0, s02 = -1, s03 = 1, s12 = 0, s13 = 0, s23 = -1
    lse0 = math.log(math.exp(0) + math.exp(-1) + math.exp(1))   # row 0 against rows 1, 2, 3
    lse1 = math.log(3 * math.exp(0))                            # row 1 against rows 0, 2, 3
    lse2 = math.log(math.exp(-1) + math.exp(0) + math.exp(-1))  # row 2 against rows 0, 1, 3
    loss0 = -((0 - lse0) + (-1 - lse0)) / 2                     # positives 1, 2
    loss1 = -((0 - lse1) + (0 - lse1)) / 2                      # positives 0, 2
    loss2 = -((-1 - lse2) + (0 - lse2)) / 2                     # positives 0, 1
    # row 3 has no positive and is left out of the mean
    expected = (loss0 + loss1 + loss2) / 3
    assert supcon_loss(features, labels, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_temperature_scales_the_similarities():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # T = 0.5: similarities doubled. Row 0: positive 1 (s=0), negative 2 (s=-2); row 1: positive 0
    # (s=0), negative 2 (s=0)
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert supcon_loss(features, labels, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("labels", [[0, 1, 2], [5]])
def test_no_positive_gives_zero_and_backward_works(labels):
    features = torch.randn(len(labels), 8, requires_grad=True)
    loss = supcon_loss(features, torch.tensor(labels))
    assert loss.item() == 0.0
    loss.backward()
    assert features.grad is not None and not features.grad.any()


def test_better_separated_features_give_lower_loss():
    torch.manual_seed(0)
    centres = torch.eye(3, 16) * 4
    labels = torch.arange(3).repeat_interleave(5)
    noise = torch.randn(15, 16)
    tight = supcon_loss(centres[labels] + 0.1 * noise, labels)
    loose = supcon_loss(centres[labels] + 2.0 * noise, labels)
    random = supcon_loss(noise, labels)
    assert tight < loose < random


def test_small_temperature_is_stable_and_gradients_flow():
    torch.manual_seed(0)
    features = torch.randn(6, 4, requires_grad=True)
    loss = supcon_loss(features, torch.tensor([0, 0, 1, 1, 2, 2]), temperature=1e-3)  # exp(1000) overflows fp32
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_prototypes_with_object_features():
    # the refdet use: 2 prototypes (labels 0, 1) then 3 object features, each near its video's prototype
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    objects = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.8, -0.1]])
    features = torch.cat([prototypes, objects])
    good = supcon_loss(features, torch.tensor([0, 1, 0, 1, 0]))
    swapped = supcon_loss(features, torch.tensor([0, 1, 1, 0, 1]))
    assert good < swapped
