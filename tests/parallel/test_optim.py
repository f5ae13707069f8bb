"""Weight-decay groups and LAMB against a hand computation."""
import copy

import pytest
import torch
from torch import nn

from parallel.config import OptimConfig
from parallel.optim import Lamb, build_optimizer, param_groups


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.dense = nn.Linear(3, 3)
        self.LayerNorm = nn.LayerNorm(3)
        self.decoder = nn.Linear(3, 5, bias=False)
        self.decoder.weight = self.emb.weight  # tied: must appear once


def test_param_groups_no_decay_on_bias_and_layernorm():
    m = Tiny()
    decay, plain = param_groups(m, 0.01)
    assert decay["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m.emb.weight), id(m.dense.weight)}
    assert {id(p) for p in plain["params"]} == {id(m.dense.bias), id(m.LayerNorm.weight), id(m.LayerNorm.bias)}
    assert plain["adapt"] is False


def test_build_optimizer_kinds():
    assert isinstance(build_optimizer(Tiny(), OptimConfig(name="adamw")), torch.optim.AdamW)
    assert isinstance(build_optimizer(Tiny(), OptimConfig(name="lamb")), Lamb)
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer(Tiny(), OptimConfig(name="sgd"))


def hand_lamb(w, grads, lr, b1, b2, eps, wd, adapt, max_trust=10.0):
    m = torch.zeros_like(w, dtype=torch.float64)
    v = torch.zeros_like(m)
    w = w.double().clone()
    for t, g in enumerate(grads, start=1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps) + wd * w
        trust = 1.0
        if adapt and w.norm() > 0 and u.norm() > 0:
            trust = min(float(w.norm() / u.norm()), max_trust)
        w = w - lr * trust * u
    return w


@pytest.mark.parametrize("adapt,wd", [(True, 0.1), (False, 0.0)])
def test_lamb_matches_hand_computation(adapt, wd):
    torch.manual_seed(0)
    w0 = torch.randn(4, 3)
    grads = [torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3) * 10]
    p = nn.Parameter(w0.clone())
    opt = Lamb([{"params": [p], "weight_decay": wd, "adapt": adapt}], lr=0.05, betas=(0.9, 0.99), eps=1e-6)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = hand_lamb(w0, grads, 0.05, 0.9, 0.99, 1e-6, wd, adapt)
    torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


def test_lamb_trust_ratio_is_clamped_and_zero_weights_use_one():
    p = nn.Parameter(torch.full((2,), 1e6))
    opt = Lamb([p], lr=1e-3, max_trust=10.0)
    p.grad = torch.ones(2)
    opt.step()  # u = 1/(1+eps) per element, trust = ||p||/||u|| = 1e6 -> clamped to 10
    assert p.detach() == pytest.approx(torch.full((2,), 1e6 - 1e-3 * 10 / (1 + 1e-6)).numpy())
    z = nn.Parameter(torch.zeros(2))
    opt = Lamb([z], lr=0.1)
    z.grad = torch.ones(2)
    opt.step()
    assert z.detach() == pytest.approx(torch.full((2,), -0.1 / (1 + 1e-6)).numpy())


def test_lamb_state_roundtrip_is_exact():
    torch.manual_seed(1)
    a = nn.Parameter(torch.randn(3, 3))
    opt = Lamb([a], lr=0.01, weight_decay=0.01)
    a.grad = torch.randn(3, 3)
    opt.step()
    b = nn.Parameter(a.detach().clone())
    opt_b = Lamb([b], lr=0.01, weight_decay=0.01)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if read back from disk
    g = torch.randn(3, 3)
    a.grad, b.grad = g.clone(), g.clone()
    opt.step()
    opt_b.step()
    assert torch.equal(a, b)
