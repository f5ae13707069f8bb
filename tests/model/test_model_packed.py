"""Packed rows and unpadded attention: every architecture, padded and unpadded (cu_seqlens) paths."""
import pytest
import torch

from helpers_model import example_ids, modern_cfg, packed_batch, run, run_packed, single_batch, tiny_batch, tiny_cfg
from pretrain.data.config import ObjectiveConfig
from pretrain.model import build_model
from pretrain.objectives import pretraining_loss

SEQ = 16
ROWS = [[5, 7, 3], [9, 6], [16]]   # example lengths per row: a full row, and a row with a pad tail


# How attention runs: padded rows with a mask; the real tokens with masked SDPA on re-padded rows
# (the CPU default); the real tokens with PyTorch's varlen kernels (nested SDPA; FlexAttention for
# local windows where no gradient is needed on the CPU).
ATTENTION = {"padded": dict(unpad=False), "unpadded": dict(unpad=True, attention_backend="sdpa"),
             "varlen": dict(unpad=True, attention_backend="varlen")}


def cfg_for(arch: str, **kw):
    if "attention" in kw:
        kw.update(ATTENTION[kw.pop("attention")])
    if arch == "modernbert":
        return modern_cfg(sentence_head="sop", **kw)
    return tiny_cfg(arch, hidden_dropout=0.0, attention_dropout=0.0, max_position_embeddings=32, **kw)


def packed(cfg, seed=0):
    lengths = [n for row in ROWS for n in row]
    exs = example_ids(cfg, lengths, seed)
    rows, k = [], 0
    for row in ROWS:
        rows.append(exs[k:k + len(row)])
        k += len(row)
    return packed_batch(cfg, rows, SEQ, seed)


def places():
    for r, row in enumerate(ROWS):
        start = 0
        for n in row:
            yield r, start, n
            start += n


ARCHS = ["bert", "albert", "modernbert"]


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_example_equals_the_example_alone(arch, attention):
    """No token sees another example: each packed example's MLM and sentence logits equal those
    of the example run alone in its own padded row."""
    cfg = cfg_for(arch, attention=attention)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = packed(cfg)
    out = run_packed(model, batch)
    assert out.sentence_index is not None and len(out.sentence_index) == sum(len(r) for r in ROWS)
    mlm_rows = (batch["labels"] != -100).reshape(-1).nonzero().squeeze(1)
    for k, (r, start, n) in enumerate(places()):
        alone = single_batch(batch, r, start, n, SEQ)
        ref = run(model, alone)
        flat = r * SEQ + start
        assert int(out.sentence_index[k]) == flat
        torch.testing.assert_close(out.sentence_logits[k], ref.sentence_logits[0], rtol=0, atol=1e-5)
        mine = (mlm_rows >= flat) & (mlm_rows < flat + n)
        torch.testing.assert_close(out.mlm_logits[mine], ref.mlm_logits, rtol=0, atol=1e-5)
        assert torch.equal(out.mlm_labels[mine], ref.mlm_labels)


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("arch", ARCHS)
def test_changing_one_example_leaves_the_others_unchanged(arch, attention):
    """Padded and unpadded attention, with the loader's layout in the batch: the logits of the
    masked positions of every other example stay exactly as they were."""
    from pretrain.model.layout import LAYOUT_KEYS, batch_layout

    cfg = cfg_for(arch, attention=attention)
    model = build_model(cfg).eval()
    batch = packed(cfg)
    batch["labels"] = torch.where(batch["attention_mask"].bool(), batch["input_ids"], -100)  # every real token
    batch.update(batch_layout(batch["attention_mask"], batch["position_ids"], batch["labels"]))
    other = dict(batch, input_ids=batch["input_ids"].clone())
    other["input_ids"][0, 6:11] = torch.randint(5, cfg.vocab_size, (5,))   # inside example 2 of row 0

    def logits(b):
        keys = ("input_ids", "token_type_ids", "attention_mask", "labels", "position_ids") + LAYOUT_KEYS
        return model(**{k: b[k] for k in keys}).mlm_logits   # [real tokens, V], row-major

    a, b = logits(batch), logits(other)
    flat = batch["masked_index"]
    changed = (flat >= 5) & (flat < 12)                      # example 2 of row 0: positions 5..11
    torch.testing.assert_close(a[~changed], b[~changed], rtol=0, atol=1e-6)
    assert not torch.allclose(a[changed], b[changed])


@pytest.mark.parametrize("backend", ["sdpa", "varlen"])
@pytest.mark.parametrize("packed_rows", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_unpadded_equals_padded_outputs_and_gradients(arch, packed_rows, backend):
    torch.manual_seed(0)
    padded = build_model(cfg_for(arch, unpad=False)).train()
    unpadded = build_model(cfg_for(arch, unpad=True, attention_backend=backend)).train()
    unpadded.load_state_dict(padded.state_dict())
    cfg = padded.cfg
    batch = packed(cfg) if packed_rows else tiny_batch(cfg, seq=SEQ)
    results = []
    for model in (padded, unpadded):
        out = run_packed(model, batch) if packed_rows else run(model, batch)
        loss, _ = pretraining_loss(out, batch, 7.0, ObjectiveConfig())
        loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(b.mlm_logits, a.mlm_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.sentence_logits, a.sentence_logits, rtol=0, atol=1e-5)
    assert ga.keys() == gb.keys()
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=1e-5, atol=1e-5, msg=name)


def test_sentence_targets_read_each_examples_first_token():
    cfg = cfg_for("bert")
    model = build_model(cfg).eval()
    batch = packed(cfg)
    out = run_packed(model, batch)
    loss, stats = pretraining_loss(out, batch, 1.0, ObjectiveConfig())
    assert stats["sentence_count"] == 6
    expected = batch["sentence_label"][batch["position_ids"].eq(0) & batch["attention_mask"].bool()]
    logits = out.sentence_logits
    assert stats["sentence_correct"] == float((logits.argmax(-1) == expected).sum())


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_checkpointing_on_the_unpadded_path_gives_the_same_grads(arch):
    torch.manual_seed(0)
    plain = build_model(cfg_for(arch)).train()
    ckpt = build_model(cfg_for(arch, gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    batch = packed(plain.cfg)
    grads = []
    for model in (plain, ckpt):
        out = run_packed(model, batch)
        (out.mlm_logits.square().mean() + out.sentence_logits.square().mean()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_pipeline_form_of_packed_rows_equals_forward():
    cfg = cfg_for("modernbert")
    model = build_model(cfg).eval()
    batch = packed(cfg)
    x = model.pipeline_inputs(batch)
    for layer in model.layers():
        x = layer(x)
    ref = run_packed(model, batch)
    torch.testing.assert_close(x.mlm_logits, ref.mlm_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(x.sentence_logits, ref.sentence_logits, rtol=0, atol=1e-5)
    assert torch.equal(x.sentence_index, ref.sentence_index)


def test_varlen_local_windows_run_flex_attention_where_no_gradient_is_needed(monkeypatch):
    """model.attention_backend=varlen: ModernBERT's local layers attend through FlexAttention with
    a document + window block mask (one per forward, shared by the local layers) and give the
    masked-SDPA path's logits; on the CPU only without gradients (FlexAttention has no CPU backward)."""
    from pretrain.model import attention

    radii = []
    real = attention._window_block_mask
    monkeypatch.setattr(attention, "_window_block_mask", lambda *a: radii.append(a[2]) or real(*a))
    torch.manual_seed(0)
    reference = build_model(cfg_for("modernbert", attention="unpadded")).eval()
    varlen = build_model(cfg_for("modernbert", attention="varlen")).eval()
    varlen.load_state_dict(reference.state_dict())
    batch = packed(reference.cfg)
    with torch.no_grad():
        a, b = run_packed(reference, batch), run_packed(varlen, batch)
    assert radii == [2]                              # window 4 -> |i - j| <= 2, one mask per forward
    torch.testing.assert_close(b.mlm_logits, a.mlm_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.sentence_logits, a.sentence_logits, rtol=0, atol=1e-5)
