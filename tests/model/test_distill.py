"""objective=distill: a student learns from a frozen teacher (DistilBERT's losses)."""
import hashlib

import pytest
import torch

from helpers_model import modern_cfg, objective_batch, tiny_cfg
from pretrain.data.config import ObjectiveConfig
from pretrain.model import build_model
from pretrain.model.layout import LAYOUT_KEYS
from pretrain.objectives import build_objective

KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "position_ids") + LAYOUT_KEYS
SHAPE = dict(vocab_size=400, hidden_size=64, num_heads=4, intermediate_size=96, sentence_head="none",
             hidden_dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer_file):
    """A 4-layer BERT teacher exported as transformers' BertForPreTraining."""
    from pretrain.hf.export import export_hf

    cfg = tiny_cfg("bert", num_layers=4, **SHAPE)
    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("teacher")
    export_hf(build_model(cfg), cfg, tokenizer_file, out)
    return str(out)


def student(teacher_dir, layers=2, arch="bert", **objective):
    cfg = modern_cfg(**{**SHAPE, "num_layers": layers}) if arch == "modernbert" else tiny_cfg(arch, num_layers=layers, **SHAPE)
    torch.manual_seed(0)
    model = build_model(cfg)
    obj = build_objective(ObjectiveConfig(name="distill", sentence_task="none", teacher=teacher_dir, **objective), cfg)
    model.attach_objective(obj)
    obj.initialize(model)
    batch = objective_batch(cfg)
    return model, obj, batch


def step(model, obj, batch):
    out = model(**{k: batch[k] for k in KEYS})
    return obj.loss(out, batch, obj.counts(batch).clamp_min(1).float())


def digest(module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().numpy().tobytes())
    return h.hexdigest()


def test_init_from_every_other_layer_copies_the_right_layers(teacher_dir):
    model, obj, _ = student(teacher_dir, layers=2)
    teacher = obj.teacher()
    assert obj.initialized_from == [0, 2]
    for i, j in ((0, 0), (1, 2)):
        mine, theirs = model.encoder.ordered()[i].state_dict(), teacher.encoder.ordered()[j].state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    mine, skipped = model.encoder.ordered()[1].state_dict(), teacher.encoder.ordered()[1].state_dict()
    assert not all(torch.equal(mine[k], skipped[k]) for k in mine)   # teacher layer 1 was skipped
    assert torch.equal(model.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)


def test_kl_and_cosine_are_zero_when_the_student_is_the_teacher(teacher_dir):
    model, obj, batch = student(teacher_dir, layers=4)
    model.eval()
    _, stats = step(model, obj, batch)
    assert float(stats["kl_sum"]) == pytest.approx(0.0, abs=1e-4)
    assert float(stats["cos_sum"]) == pytest.approx(0.0, abs=1e-4)
    assert float(stats["agree"]) == float(stats["mlm_count"]) > 0
    assert float(stats["mlm_correct"]) == float(stats["teacher_correct"])


def test_the_student_learns_and_the_teacher_never_changes(teacher_dir):
    # the KL term alone: the student moves towards the (random) teacher's distribution
    model, obj, batch = student(teacher_dir, layers=2, init_from_teacher=False, mlm_weight=0.0, distill_cos_weight=0.0)
    teacher = obj.teacher()
    before = digest(teacher)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(p is q for p in model.parameters() for q in teacher.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss, stats = step(model, obj, batch)
        loss.backward()
        opt.step()
        first = first if first is not None else float(stats["kl_sum"])
    assert float(stats["kl_sum"]) < 0.5 * first
    assert digest(teacher) == before and all(p.grad is None for p in teacher.parameters())


def test_a_teacher_of_another_architecture_and_width_teaches_without_the_cosine(teacher_dir):
    model, obj, batch = student(teacher_dir, layers=3, arch="modernbert", init_from_teacher=False, distill_cos_weight=0.0)
    loss, stats = step(model, obj, batch)
    loss.backward()
    assert torch.isfinite(loss) and float(stats["kl_sum"]) > 0


def test_mismatches_are_one_line_errors(teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="needs objective.teacher"):
        build_objective(ObjectiveConfig(name="distill", sentence_task="none"), tiny_cfg("bert", **SHAPE))
    with pytest.raises(ValueError, match="not a Hugging Face model directory"):
        build_objective(ObjectiveConfig(name="distill", sentence_task="none", teacher=str(tmp_path)),
                        tiny_cfg("bert", **SHAPE)).preflight("0" * 64)
    from pretrain.shardformat import tokenizer_fingerprint
    from tokenizers import Tokenizer

    sha = tokenizer_fingerprint(Tokenizer.from_file(f"{teacher_dir}/tokenizer.json"))
    wide = {**SHAPE, "hidden_size": 32}
    obj = build_objective(ObjectiveConfig(name="distill", sentence_task="none", teacher=teacher_dir), tiny_cfg("bert", **wide))
    with pytest.raises(ValueError, match="teacher's hidden_size 64 != the student's 32; set objective.distill_cos_weight=0"):
        obj.preflight(sha)
    with pytest.raises(ValueError, match="differs from the tokenizer of the training data"):
        obj.preflight("0" * 64)
    obj = build_objective(ObjectiveConfig(name="distill", sentence_task="none", teacher=teacher_dir, distill_cos_weight=0),
                          tiny_cfg("bert", **wide))
    with pytest.raises(ValueError, match="init_from_teacher=true needs the teacher's shape"):
        obj.initialize(build_model(tiny_cfg("bert", **wide)))
    with pytest.raises(ValueError, match="parallel.zero_stage <= 2"):
        obj.check_parallel(3, 1)
