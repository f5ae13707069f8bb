"""FLOPs counter: an explicit hand count and torch's FlopCounterMode agree with flops.py."""
import pytest
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from helpers_model import tiny_batch, tiny_cfg
from pretrain.model import build_model, flops_per_sequence, flops_per_step
from pretrain.model.flops import forward_flops_per_sequence


def test_hand_count_bert():
    # L=10 tokens, H=8, I=16, V=20, 2 layers, M=3 masked; every matmul is 2*m*n*k.
    cfg = tiny_cfg(vocab_size=20, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16)
    qkv = 2 * 10 * 8 * 24          # 3840
    scores = 2 * 10 * 10 * 8       # 1600  (QK^T over all heads)
    context = 2 * 10 * 10 * 8      # 1600  (AV)
    out = 2 * 10 * 8 * 8           # 1280
    ffn = 2 * 10 * 8 * 16 * 2      # 5120
    layer = qkv + scores + context + out + ffn  # 13440
    mlm = 2 * 3 * 8 * 8 + 2 * 3 * 8 * 20        # 384 + 960
    sentence = 2 * 8 * 8 + 2 * 8 * 2            # 128 + 32
    forward = 2 * layer + mlm + sentence        # 28384
    assert forward == 28384
    assert forward_flops_per_sequence(cfg, 10, 3) == forward
    assert flops_per_sequence(cfg, 10, 3) == 3 * forward
    assert flops_per_step(cfg, 4, 10, 12) == 4 * flops_per_sequence(cfg, 10, 3)


def test_hand_count_albert():
    # ALBERT adds the E->H projection and its MLM transform maps H->E; 2 applications of 1 layer.
    cfg = tiny_cfg("albert", vocab_size=20, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
                   embedding_size=4)
    projection = 2 * 10 * 4 * 8                  # 640
    layer = 13440                                # as for BERT above
    mlm = 2 * 3 * 8 * 4 + 2 * 3 * 4 * 20         # 192 + 480
    sentence = 2 * 8 * 8 + 2 * 8 * 2             # 160
    assert forward_flops_per_sequence(cfg, 10, 3) == projection + 2 * layer + mlm + sentence


@pytest.mark.parametrize("arch", ["bert", "albert", "modernbert"])
def test_matches_torch_flop_counter_forward_backward(arch):
    # Global attention only: SDPA computes every query-key pair, the count is the same.
    extra = dict(linear_bias=False, norm_bias=False) if arch == "modernbert" else {}
    cfg = tiny_cfg(arch, hidden_dropout=0.0, attention_dropout=0.0, unpad=False, **extra)
    model = build_model(cfg).train()
    batch = tiny_batch(cfg, batch=2, seq=12, pad_from=None)
    n_masked = int((batch["labels"] != -100).sum())
    # FlopCounterMode has no formula for the fused CPU attention kernel; the math backend runs
    # attention as plain matmuls (forward and autograd backward), which it counts.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["labels"])
        (out.mlm_logits.float().logsumexp(-1).sum() + out.sentence_logits.sum()).backward()
    assert counter.get_total_flops() == flops_per_step(cfg, 2, 12, n_masked)
