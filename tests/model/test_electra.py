"""objective=electra: the generator shares the model's embeddings (one tensor, gradients from both
networks), replacements are sampled reproducibly from the RNG state, both networks learn, and a
training step reads nothing back from the device."""
import pytest
import torch

from helpers_model import modern_cfg, objective_batch, tiny_cfg
from pretrain.data.config import ObjectiveConfig
from pretrain.model import build_model
from pretrain.model.layout import LAYOUT_KEYS
from pretrain.objectives import build_objective
from pretrain.objectives.electra import generator_config

KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "position_ids") + LAYOUT_KEYS


def electra(arch: str, **objective):
    shape = dict(hidden_size=64, num_heads=4, intermediate_size=96, sentence_head="none")
    cfg = modern_cfg(**shape) if arch == "modernbert" else tiny_cfg(arch, hidden_dropout=0.0, attention_dropout=0.0, **shape)
    torch.manual_seed(0)
    model = build_model(cfg)
    obj = build_objective(ObjectiveConfig(name="electra", sentence_task="none", **objective), cfg)
    model.attach_objective(obj)
    batch = objective_batch(cfg)
    return model, obj, batch


def step(model, obj, batch):
    out = model(**{k: batch[k] for k in KEYS})
    loss, stats = obj.loss(out, batch, obj.counts(batch).clamp_min(1).float())
    return out, loss, stats


@pytest.mark.parametrize("arch", ["bert", "albert", "modernbert"])
def test_generator_and_discriminator_share_one_embedding_table_with_gradients_from_both(arch):
    model, obj, batch = electra(arch)
    table = model.embeddings.word_embeddings.weight if arch != "modernbert" else model.embeddings.tok_embeddings.weight
    generator = model.objective_modules["generator"]
    assert generator.embeddings.word_embeddings.weight is table and generator.heads.mlm.decoder_weight is table
    params = list(model.parameters())
    assert len({id(p) for p in params}) == len(params) and sum(p is table for p in params) == 1
    grads = {}
    for name, weights in (("generator", dict(disc_weight=0.0)), ("discriminator", dict(mlm_weight=0.0))):
        model.zero_grad()
        obj.disc_weight = weights.get("disc_weight", 50.0)
        obj.cfg.mlm_weight = weights.get("mlm_weight", 1.0)
        torch.manual_seed(1)
        step(model, obj, batch)[1].backward()
        grads[name] = table.grad.clone()
        assert grads[name].abs().sum() > 0, name
    assert not torch.allclose(grads["generator"], grads["discriminator"])


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_both_networks_learn_and_the_metrics_are_ratios_of_sums(arch):
    model, obj, batch = electra(arch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = last = None
    for i in range(40):
        torch.manual_seed(100 + i)
        _, loss, stats = step(model, obj, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        summary = obj.summarize({k: float(v) for k, v in stats.items()}, "train")
        first = first or summary
        last = summary
    assert last["train/mlm_loss"] < 0.7 * first["train/mlm_loss"]
    assert last["train/disc_loss"] < 0.7 * first["train/disc_loss"]
    assert last["train/disc_acc"] > 1 - last["train/replaced_fraction"]   # beats "nothing was replaced"
    assert 0 < last["train/replaced_fraction"] <= 1 and set(last) >= {"train/disc_precision", "train/disc_recall"}


def test_replacements_follow_the_rng_state_and_evaluation_is_fixed():
    """The discriminator's logits depend on the sampled tokens: equal under the same RNG state,
    different under another; in eval mode the same whatever the RNG state."""
    model, obj, batch = electra("bert")
    runs = []
    with torch.no_grad():
        for seed in (7, 7, 8):
            torch.manual_seed(seed)
            runs.append(step(model, obj, batch)[0].disc_logits)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        a = step(model, obj, batch)[0].disc_logits
        torch.manual_seed(2)
        b = step(model, obj, batch)[0].disc_logits
    assert torch.equal(a, b)


def test_a_training_step_reads_nothing_back_from_the_device():
    from test_model_no_sync import host_syncs_forbidden

    model, obj, batch = electra("modernbert")
    with host_syncs_forbidden():
        _, loss, _ = step(model, obj, batch)
        loss.backward()


def test_generator_shape_is_a_fraction_in_whole_heads():
    base = tiny_cfg("bert", hidden_size=768, num_heads=12, intermediate_size=3072)
    g = generator_config(base, 0.25)
    assert (g.hidden_size, g.num_heads, g.intermediate_size, g.num_layers) == (192, 3, 768, base.num_layers)
    assert generator_config(base, 1 / 3).hidden_size == 256
    with pytest.raises(ValueError, match="generator_hidden_fraction"):
        generator_config(base, 0.0)


def _tokenizer(tmp_path, size: int) -> str:
    """A WordPiece tokenizer.json of `size` tokens (the specials first, as ours)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                        + [f"w{i}" for i in range(size - 5)])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    return path


def test_export_is_electra_for_pretraining_and_masked_lm_with_our_logits(tmp_path):
    """BERT-shaped: the discriminator as transformers' ElectraForPreTraining and the generator as
    ElectraForMaskedLM give our logits to 1e-5 (fp32), from the directories written by export."""
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    from pretrain.hf.electra import export_electra

    model, obj, batch = electra("bert")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(3):   # move every weight away from its initialisation
        _, loss, _ = step(model, obj, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    export_electra(model, _tokenizer(tmp_path, model.cfg.vocab_size), tmp_path / "export")
    ids, tt, mask = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    with torch.no_grad():
        hidden, ctx = model.encode(ids, tt, mask, unpad=False)
        ours_disc = model.objective_modules["discriminator"](model.heads.final_norm(hidden))
        generator = model.objective_modules["generator"]
        g_hidden, g_ctx = generator.encode(ids, tt, mask, unpad=False)
        ours_gen = generator.heads(g_hidden, g_ctx, None).mlm_logits
        disc = ElectraForPreTraining.from_pretrained(tmp_path / "export").eval()
        gen = ElectraForMaskedLM.from_pretrained(tmp_path / "export" / "generator").eval()
        theirs_disc = disc(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
        theirs_gen = gen(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
    real = mask.bool()
    torch.testing.assert_close(theirs_disc[real], ours_disc[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(theirs_gen[real], ours_gen[real], rtol=0, atol=1e-5)


def test_with_the_loaders_uniforms_the_replacements_depend_on_the_examples_alone():
    """With `sample_uniform` (one number per masked position, from each example's own stream) the
    replacements do not depend on the RNG state (nor on the step, rank or world size); the inverse
    CDF draws from the softmax."""
    from pretrain.objectives.electra import inverse_cdf_sample

    model, obj, batch = electra("bert")
    batch["sample_uniform"] = torch.rand(batch["masked_index"].numel(), generator=torch.Generator().manual_seed(3))
    outs = []
    with torch.no_grad():
        for seed in (7, 8):
            torch.manual_seed(seed)
            outs.append(model(**{k: batch[k] for k in (*KEYS, "sample_uniform")}).disc_logits)
    assert torch.equal(outs[0], outs[1])
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]))
    picks = inverse_cdf_sample(logits.repeat(3, 1), torch.tensor([0.05, 0.05, 0.25, 0.6, 0.95, 0.8]))
    assert picks.tolist() == [0, 0, 1, 1, 2, 2]
