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


class ReferenceLamb(torch.optim.Optimizer):
    """The previous Lamb.step, with a host sync (.item()) per parameter: the reference the
    tensor-only version must equal bit for bit on CPU."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, max_trust=10.0, adapt=True):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      max_trust=max_trust, adapt=adapt))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = int(state["step"].item())
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** t)
                v_hat = v / (1 - beta2 ** t)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                data = p.float()
                if group["weight_decay"]:
                    update.add_(data, alpha=group["weight_decay"])
                trust = 1.0
                if group["adapt"]:
                    w_norm = data.norm().item()
                    u_norm = update.norm().item()
                    if w_norm > 0 and u_norm > 0:
                        trust = min(max(w_norm / u_norm, 0.0), group["max_trust"])
                p.add_((-group["lr"] * trust * update).to(p.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lamb_without_host_syncs_equals_the_reference_bit_for_bit(dtype):
    torch.manual_seed(3)
    shapes = [(16, 8), (8,), (4, 4), (3, 5)]
    init = [torch.randn(s).to(dtype) for s in shapes]
    init[2] = torch.zeros(4, 4, dtype=dtype)  # zero weights: trust 1
    init[3] = torch.full((3, 5), 1e4).to(dtype)  # huge weights: trust clamped to max_trust

    def groups(params):
        return [{"params": [params[0], params[2], params[3]], "weight_decay": 0.01, "adapt": True},
                {"params": [params[1]], "weight_decay": 0.0, "adapt": False}]

    ours = [nn.Parameter(w.clone()) for w in init]
    ref = [nn.Parameter(w.clone()) for w in init]
    opt = Lamb(groups(ours), lr=1.76e-3, betas=(0.9, 0.999), eps=1e-6)
    opt_ref = ReferenceLamb(groups(ref), lr=1.76e-3, betas=(0.9, 0.999), eps=1e-6)
    for step in range(25):
        for a, b in zip(ours, ref):
            g = torch.randn(a.shape).to(dtype) * (10.0 if step % 7 == 0 else 1.0)
            a.grad, b.grad = g.clone(), g.clone()
        if step == 5:
            ours[1].grad = ref[1].grad = None  # a parameter without a gradient this step
        opt.step()
        opt_ref.step()
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert torch.equal(a, b), (step, i, (a.float() - b.float()).abs().max())
    for a, b in zip(ours, ref):
        sa, sb = opt.state[a], opt_ref.state[b]
        assert torch.equal(sa["step"], sb["step"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_lamb_step_does_no_host_sync_per_parameter(monkeypatch):
    """`.item()` / `float(tensor)` on a parameter-sized result is what stalls a GPU per tensor."""
    calls = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(self.shape) or real_item(self))
    p = nn.Parameter(torch.randn(4, 4))
    opt = Lamb([{"params": [p], "weight_decay": 0.01, "adapt": True}], lr=1e-3)
    p.grad = torch.randn(4, 4)
    opt.step()
    opt.step()
    assert calls == []
