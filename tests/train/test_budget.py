"""Budgets: fractions used, the one that binds, time that continues across launches."""
import pytest

from pretrain.train.budget import Budget


def test_fraction_is_the_budget_closest_to_its_end():
    b = Budget(max_steps=1000, max_tokens=10_000, max_time="100")
    assert b.used(100, 5_000, 20.0) == {"max_steps": 0.1, "max_tokens": 0.5, "max_time": 0.2}
    assert b.fraction(100, 5_000, 20.0) == 0.5 and b.binding(100, 5_000, 20.0) == "max_tokens"
    assert b.fraction(100, 5_000, 250.0) == 1.0 and b.binding(100, 5_000, 250.0) == "max_time"
    assert b.exhausted(100, 5_000, 20.0) is None
    assert b.exhausted(100, 10_000, 20.0) == "max_tokens=10000"
    assert b.exhausted(1000, 10_000, 120.0) == "max_steps=1000"  # steps first, as before
    assert b.exhausted(10, 10, 100.0) == "max_time=100s"


def test_time_continues_from_the_saved_seconds():
    b = Budget(max_steps=None, max_tokens=None, max_time="00:01:00", train_seconds=45.0)
    assert 45.0 <= b.local_seconds() < 50.0
    assert b.fraction(0, 0, b.local_seconds()) == pytest.approx(0.75, abs=0.05)
