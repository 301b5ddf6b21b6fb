"""The learning-rate schedules, by hand."""
import pytest

from nocdet.training.schedules import cosine_lr, step_lr


def test_step_schedule_with_and_without_warmup():
    assert [step_lr(0.1, i, [10, 20], 0.1) for i in (0, 9, 10, 19, 20)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001])
    # warm-up from a third of the rate at iteration 0 to all of it at iteration 4
    assert [step_lr(0.3, i, [10], 0.1, 4, 1 / 3) for i in (0, 2, 4)] == pytest.approx([0.1, 0.2, 0.3])


def test_cosine_schedule_with_warmup():
    assert [cosine_lr(1.0, i, 10, 2) for i in (0, 1, 2, 6, 10)] == pytest.approx([0.1, 0.55, 1.0, 0.5, 0.0])
