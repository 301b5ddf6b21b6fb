"""Pinned numbers of tiny seeded models (Detectron2's habit): a refactor that changes what the
NoC head or the end-to-end detector computes fails here, even when every shape still fits.

The values were recorded from this code on 2026-12-03 (torch 2.14.1, CPU; the same with 1 and 2
threads). A deliberate change of the numbers (a new init, a new loss) updates them here, saying
why in the commit."""
import pytest
import torch
import torch.nn.functional as F

from nocdet.e2e.model import build_e2e_model
from nocdet.noc.head import NoCHead
from nocdet.noc.init import init_gaussian
from test_e2e_model import K, scene, tiny_config

REL = 1e-5


def test_maxout_noc_loss_before_and_after_five_sgd_steps():
    head = init_gaussian(NoCHead("c8-mo-c8-f16-f16-f5", in_channels=4, roi_size=3), fc_std=0.1, cls_std=0.1,
                         seed=0)
    g = torch.Generator().manual_seed(1)
    pathways = (torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, 4, 3, 3, generator=g))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    out = head(pathways)
    assert F.cross_entropy(out.logits, labels).item() == pytest.approx(1.6046894788742065, rel=REL)
    assert out.logits.sum().item() == pytest.approx(-0.32404541969299316, rel=1e-4)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(head(pathways).logits, labels).backward()
        optimizer.step()
    assert F.cross_entropy(head(pathways).logits, labels).item() == pytest.approx(1.4589743614196777, rel=REL)


def test_end_to_end_losses_of_a_seeded_tiny_detector():
    torch.manual_seed(0)
    model = build_e2e_model(tiny_config(), K)
    images, targets = scene(0)
    torch.manual_seed(1)
    model.train()
    losses = {name: value.item() for name, value in model(images, targets).items()}
    assert losses == pytest.approx({"loss_objectness": 0.6948639750480652, "loss_rpn_box_reg": 0.016412530094385147,
                                    "loss_classifier": 1.2576463222503662, "loss_box_reg": 7.706227188464254e-05},
                                   rel=1e-4)
