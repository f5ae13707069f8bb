"""The model itself: shapes, masking, the ordered-layer form, checkpointing, init, imports."""
import subprocess
import sys

import pytest
import torch

from helpers_model import run, tiny_batch, tiny_cfg
from pretrain.model import build_model


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_output_shapes_gather_only_masked_positions(arch):
    cfg = tiny_cfg(arch)
    model = build_model(cfg)
    batch = tiny_batch(cfg)
    out = run(model, batch)
    n = int((batch["labels"] != -100).sum())
    assert isinstance(out, tuple)  # DeepSpeed ZeRO-3 only hooks tensors inside tuples/dicts
    assert out.mlm_logits.shape == (n, cfg.vocab_size)
    assert torch.equal(out.mlm_labels, batch["labels"][batch["labels"] != -100])
    assert out.sentence_logits.shape == (3, 2)
    full = run(model.eval(), batch, all_positions=True)
    assert full.mlm_logits.shape == (3, 12, cfg.vocab_size)
    sparse = run(model, batch)
    torch.testing.assert_close(sparse.mlm_logits, full.mlm_logits[batch["labels"] != -100], rtol=0, atol=1e-6)


def test_no_sentence_head_gives_none():
    cfg = tiny_cfg(sentence_head="none")
    assert run(build_model(cfg), tiny_batch(cfg)).sentence_logits is None


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_padding_does_not_change_real_tokens(arch):
    cfg = tiny_cfg(arch)
    model = build_model(cfg).eval()
    batch = tiny_batch(cfg, pad_from=None)
    short = {k: (v[:, :8] if v.dim() == 2 else v) for k, v in batch.items()}
    padded = {k: v.clone() for k, v in short.items()}
    for k, fill in (("input_ids", 0), ("token_type_ids", 0), ("attention_mask", 0), ("labels", -100)):
        padded[k] = torch.cat([short[k], torch.full((3, 5), fill, dtype=torch.long)], dim=1)
    padded["input_ids"][:, 8:] = torch.randint(5, cfg.vocab_size, (3, 5))  # garbage under the mask
    a, b = run(model, short, all_positions=True), run(model, padded, all_positions=True)
    torch.testing.assert_close(b.mlm_logits[:, :8], a.mlm_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.sentence_logits, a.sentence_logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_ordered_layers_compose_to_forward_exactly(arch):
    cfg = tiny_cfg(arch, num_hidden_groups=1) if arch == "albert" else tiny_cfg(arch)
    model = build_model(cfg).eval()
    batch = tiny_batch(cfg)
    x = model.pipeline_inputs(batch)
    layers = model.layers()
    assert len(layers) == cfg.num_layers + 2
    for layer in layers:
        x = layer(x)
    ref = run(model, batch)
    # The pipeline form always masks block-diagonally (rows may hold several examples), the
    # forward of one-example rows uses a key mask: the same attention, other kernels.
    torch.testing.assert_close(x.mlm_logits, ref.mlm_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(x.sentence_logits, ref.sentence_logits, rtol=0, atol=1e-6)
    assert torch.equal(x.mlm_labels, ref.mlm_labels)
    if arch == "albert":  # one shared layer, listed N times as the same object
        assert all(layer is layers[1] for layer in layers[1:-1])


def test_albert_groups_follow_hf_order():
    cfg = tiny_cfg("albert", num_layers=4, num_hidden_groups=2, inner_group_num=2)
    model = build_model(cfg)
    order = [id(m) for m in model.encoder.ordered()]
    L = model.encoder.layers
    assert order == [id(L[i]) for i in (0, 1, 0, 1, 2, 3, 2, 3)]


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_gradient_checkpointing_gives_same_grads(arch):
    cfg = tiny_cfg(arch, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    plain = build_model(cfg).train()
    ckpt = build_model(tiny_cfg(arch, hidden_dropout=0.0, attention_dropout=0.0, gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    batch = tiny_batch(cfg)
    grads = []
    for model in (plain, ckpt):
        out = run(model, batch)
        (out.mlm_logits.square().mean() + out.sentence_logits.square().mean()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_decoder_tied_and_bert_init():
    cfg = tiny_cfg(initializer_range=0.05)
    model = build_model(cfg)
    assert model.heads.mlm.decoder_weight is model.embeddings.word_embeddings.weight
    w = model.encoder.layers[0].ffn_in.weight
    assert abs(w.std().item() - 0.05) < 0.01 and w.mean().abs() < 0.01
    assert torch.all(model.encoder.layers[0].ffn_in.bias == 0) and torch.all(model.heads.mlm.bias == 0)
    assert torch.all(model.encoder.layers[0].ffn_norm.weight == 1)
    assert torch.all(model.embeddings.word_embeddings.weight[cfg.pad_token_id] == 0)


def test_dropout_only_in_training():
    cfg = tiny_cfg()
    model = build_model(cfg)
    batch = tiny_batch(cfg)
    model.eval()
    assert torch.equal(run(model, batch).mlm_logits, run(model, batch).mlm_logits)
    model.train()
    assert not torch.equal(run(model, batch).mlm_logits, run(model, batch).mlm_logits)


def test_bad_config_is_one_clear_error():
    with pytest.raises(ValueError, match="model.hidden_act"):
        build_model(tiny_cfg(hidden_act="swish"))
    with pytest.raises(ValueError, match="model.vocab_size"):
        build_model(tiny_cfg(vocab_size=0))
    with pytest.raises(ValueError, match="num_heads"):
        build_model(tiny_cfg(num_heads=5))


def test_model_package_imports_nothing_distributed():
    code = ("import sys, pretrain.model, pretrain.model.flops, pretrain.objectives; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('deepspeed', 'parallel')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
