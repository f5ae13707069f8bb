"""Our model and transformers' Bert/AlbertForPreTraining are interchangeable (eval mode, fp32)."""
import pytest
import torch
from transformers import AlbertForPreTraining, BertForPreTraining

from helpers_model import run, tiny_batch, tiny_cfg
from pretrain.data.config import ObjectiveConfig
from pretrain.hf.convert import from_hf_config, load_hf_state_dict, to_hf_config, to_hf_state_dict
from pretrain.hf.export import to_hf_model
from pretrain.model import build_model
from pretrain.objectives import pretraining_loss

CASES = {
    "bert": dict(arch="bert"),
    "bert-relu": dict(arch="bert", hidden_act="relu"),
    "albert": dict(arch="albert"),
    "albert-groups": dict(arch="albert", num_layers=4, num_hidden_groups=2, inner_group_num=2),
}


def hf_outputs(hf, batch, with_labels=False):
    kw = dict(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"])
    if with_labels:
        kw["labels"] = batch["labels"]
        kw["next_sentence_label" if isinstance(hf, BertForPreTraining) else "sentence_order_label"] = batch["sentence_label"]
    out = hf(**kw)
    sentence = out.seq_relationship_logits if isinstance(hf, BertForPreTraining) else out.sop_logits
    return out, sentence


def assert_same_predictions(ours, hf, batch):
    mine = run(ours, batch, all_positions=True)
    theirs, sentence = hf_outputs(hf, batch)
    assert (mine.mlm_logits - theirs.prediction_logits).abs().max() <= 1e-5
    assert (mine.sentence_logits - sentence).abs().max() <= 1e-5


@pytest.mark.parametrize("case", list(CASES))
def test_ours_to_hf_equal_logits_and_loss(case):
    cfg = tiny_cfg(**CASES[case])
    ours = build_model(cfg).eval()
    hf = to_hf_model(ours, cfg)
    batch = tiny_batch(cfg)
    assert_same_predictions(ours, hf, batch)
    # HF: mean MLM CE over labels != -100 + mean sentence CE (ignore -100) == ours with local count.
    batch["sentence_label"] = torch.tensor([0, 1, 1])  # HF's SOP loss has no ignore-free guarantee
    theirs, _ = hf_outputs(hf, batch, with_labels=True)
    n = int((batch["labels"] != -100).sum())
    loss, _ = pretraining_loss(run(ours, batch), batch, n, ObjectiveConfig())
    assert abs(loss.item() - theirs.loss.item()) <= 1e-5


@pytest.mark.parametrize("case", list(CASES))
def test_hf_to_ours_equal_logits(case):
    cfg = tiny_cfg(**CASES[case])
    hf_cls = BertForPreTraining if cfg.arch == "bert" else AlbertForPreTraining
    torch.manual_seed(1)
    hf = hf_cls(to_hf_config(cfg)).eval()
    with torch.no_grad():  # HF zero-inits biases/LN: randomise so a mis-mapped tensor shows
        for p in hf.parameters():
            p.add_(0.02 * torch.randn_like(p))
    back = from_hf_config(hf.config)
    for field in ("arch", "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "hidden_act",
                  "embedding_size", "num_hidden_groups", "inner_group_num", "layer_norm_eps"):
        expected = getattr(cfg, field)
        assert getattr(back, field) == (expected if field != "embedding_size" or cfg.arch == "albert" else None)
    ours = build_model(back).eval()
    load_hf_state_dict(ours, hf.state_dict())
    assert_same_predictions(ours, hf, tiny_batch(cfg))
    # and the conversion is a bijection on the weights
    again = to_hf_state_dict(ours)
    for k, v in hf.state_dict().items():
        if k in again:
            assert torch.equal(again[k], v), k
