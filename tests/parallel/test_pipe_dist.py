"""Pipeline parallelism on real processes (torchrun, gloo, DS_ACCELERATOR=cpu), tiny BERT/ALBERT.

Two launches share one work directory: `two` (2 processes: 2 stages x 1 replica, against the
plain engine on the same global batches, and checkpoints), then `four` (4 processes: 2 stages x
2 replicas, and resumes of `two`'s checkpoints in other layouts). See _pipe_worker.py.
"""
from __future__ import annotations

import math

import pytest
import torch

from test_engine_dist import launch

REL = 1e-6


def losses(metrics):
    return [m["loss"] for m in metrics]


def assert_same_steps(got, want, rel=REL):
    assert losses(got) == pytest.approx(losses(want), rel=rel)
    assert [m["grad_norm"] for m in got] == pytest.approx([m["grad_norm"] for m in want], rel=1e-5)
    assert [m["lr"] for m in got] == pytest.approx([m["lr"] for m in want], rel=1e-12)
    for key in ("mlm_count", "sentence_count", "mlm_correct", "sentence_correct"):
        assert [m[key] for m in got] == [m[key] for m in want], key
    assert [m["mlm_loss_sum"] for m in got] == pytest.approx([m["mlm_loss_sum"] for m in want], rel=REL)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipe")
    two = launch("two", work, nproc=2, script="_pipe_worker.py")
    four = launch("four", work, nproc=4, script="_pipe_worker.py")
    return work, two, four


def test_two_stages_train_and_evaluate_like_the_plain_engine_for_every_architecture(runs):
    from _pipe_worker import model_cfg
    from pretrain.model import build_model

    _, r, _ = runs
    for arch in ("bert", "albert"):
        assert_same_steps(r[f"{arch}_pipe"], r[f"{arch}_plain"])
        assert r[f"{arch}_weight_diff"] < 1e-6, arch   # weights after 4 steps
        plain_eval, pipe_eval = r[f"{arch}_plain_eval"], r[f"{arch}_pipe_eval"]
        assert pipe_eval == pytest.approx(plain_eval, rel=REL)  # three batch shapes, one partial
        assert plain_eval[2] > 0 and plain_eval[5] == 8  # masked tokens and sentences were counted
    # ModernBERT on packed rows (two examples a row: two sentence labels each).
    assert_same_steps(r["modernbert_pipe"], r["modernbert_plain"])
    assert r["modernbert_weight_diff"] < 1e-6
    assert all(m["sentence_count"] == 32 for m in r["modernbert_pipe"])
    assert all(ranks == r["bert_pipe"] for ranks in r["bert_pipe_all_ranks"])  # every rank logs the same
    assert "one shape: got [4, 8] after [4, 16]" in r["shape_change"] and "\n" not in r["shape_change"]
    ms = r["bert_pipe"]
    assert all(m["sentence_count"] == 16 for m in ms)  # 4 micro-batches x 4 sequences
    assert ms[0]["mlm_loss_sum"] / ms[0]["mlm_count"] + ms[0]["sentence_loss_sum"] / 16 == pytest.approx(
        ms[0]["loss"], rel=REL)
    # Each stage holds its share only; the decoder copy of the word embeddings is the one extra.
    model = build_model(model_cfg("bert"))
    total = sum(p.numel() for p in model.parameters())
    vocab_by_width = model.embeddings.word_embeddings.weight.numel()
    assert sum(r["stage_params"]) == total + vocab_by_width
    assert max(r["stage_params"]) < 0.6 * total


def test_dropout_replays_after_reload_and_activation_checkpointing_changes_nothing(runs):
    _, r, _ = runs
    ref = r["dropout_ref"]
    assert r["dropout_client"] == {"step": 2}
    assert r["dropout_resumed"] == ref[2:]        # bit-identical continuation
    assert r["checkpointing"] == ref              # same RNG replay in the recomputation
    assert r["checkpointing_weight_diff"] == 0.0  # the embeddings got their gradients too
    assert losses(ref) != pytest.approx(losses(r["bert_pipe"]), rel=1e-4)  # dropout was on


def test_bf16_trains_and_lamb_matches_the_plain_engine(runs):
    _, r, _ = runs
    bf16 = r["bf16"]
    assert bf16[-1]["loss"] < bf16[0]["loss"] - 0.2
    for m in bf16:
        assert {"loss", "lr", "grad_norm", "mlm_loss_sum", "mlm_correct", "sentence_count"} <= set(m)
        assert math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0
    assert_same_steps(r["lamb_pipe"], r["lamb_plain"])


def test_a_non_finite_step_is_dropped_on_every_stage_and_a_live_reload_continues(runs):
    _, r, _ = runs
    for layout, out in r["guard"].items():
        for kind in ("loss", "grad"):
            m = out[kind]
            assert m["nonfinite"] == 1.0 and m["skipped"] == 1.0, (layout, kind, m)
            assert out[f"{kind}_unchanged"] and out[f"{kind}_lr_same"], (layout, kind)
        assert math.isnan(out["loss"]["loss"]), layout  # the last stage's NaN, reported on rank 0
        assert math.isfinite(out["grad"]["loss"]) and not math.isfinite(out["grad"]["grad_norm"]), layout
        assert out["finite"] and out["global_step"] == 4, layout
        assert all(m["nonfinite"] == 0.0 and m["skipped"] == 0.0 for m in out["after"] + out["clean"]), layout
        # Dropped updates left no trace: the step-2 checkpoint reloaded in place continues alike.
        assert out["reloaded_step"] == 2, layout
        assert [m["loss"] for m in out["reloaded"]] == [m["loss"] for m in out["after"]], layout
        assert [m["grad_norm"] for m in out["reloaded"]] == [m["grad_norm"] for m in out["after"]], layout


def test_two_stages_by_two_replicas_match_the_plain_engine(runs):
    _, two, four = runs
    for arch in ("bert", "albert"):
        assert_same_steps(four[f"{arch}_pipe8"], two[f"{arch}_plain8"])
        assert four[f"{arch}_weight_diff8"] < 1e-6, arch
        assert all(ranks == four[f"{arch}_pipe8"] for ranks in four[f"{arch}_pipe8_all_ranks"])


def test_evaluation_over_uneven_replica_shards_counts_every_batch_once(runs):
    _, _, four = runs
    e = four["uneven_eval"]
    want = dict(zip(("mlm_loss_sum", "mlm_correct", "mlm_count", "sentence_loss_sum", "sentence_correct",
                     "sentence_count"), e["expected"]))
    for name in ("two_one", "three_none"):
        got = e[name]
        assert got["eval/masked_tokens"] == want["mlm_count"] > 0, name
        assert got["eval/mlm_loss"] == pytest.approx(want["mlm_loss_sum"] / want["mlm_count"], rel=REL)
        assert got["eval/mlm_acc"] == pytest.approx(want["mlm_correct"] / want["mlm_count"], rel=REL)
        assert got["eval/sop_acc"] == pytest.approx(want["sentence_correct"] / want["sentence_count"], rel=REL)


def test_resume_across_stages_replicas_and_plain_continues_exactly(runs):
    _, two, four = runs
    want = two["bert_plain"][2:]
    for name in ("pp2x2", "pp4x1", "plain4_z2", "plain_to_pp2x2"):
        assert four[name]["client"] == {"step": 2}, name
        assert_same_steps(four[name]["metrics"], want)


def test_pipeline_checkpoints_consolidate_to_the_plain_state_dict(runs):
    from _pipe_worker import model_cfg
    from parallel.convert import consolidate_fp32
    from pretrain.model import build_model

    work, _, _ = runs
    # ZeRO-0: the layer files, exactly the weights the engine held.
    albert = consolidate_fp32(str(work / "albert_z0"))
    held = torch.load(work / "albert_z0_weights.pt")
    assert sorted(albert) == sorted(build_model(model_cfg("albert")).state_dict()) == sorted(held)
    assert all(torch.equal(albert[k], held[k]) for k in held)
    # ZeRO-1: the fp32 masters, equal to the plain engine's checkpoint of the same step.
    pipe, plain = consolidate_fp32(str(work / "pipe_z1")), consolidate_fp32(str(work / "plain_z1"))
    assert sorted(pipe) == sorted(build_model(model_cfg("bert")).state_dict())
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in pipe.values())
    assert torch.equal(pipe["heads.mlm.decoder_weight"], pipe["embeddings.word_embeddings.weight"])
    assert max(float((pipe[k] - plain[k].detach()).abs().max()) for k in plain) < 1e-6
