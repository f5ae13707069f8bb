"""Multi-process pipeline scenarios for test_pipe_dist.py (torchrun, gloo, DS_ACCELERATOR=cpu).

usage: torchrun --nproc_per_node N _pipe_worker.py SCENARIO WORKDIR
Rank 0 writes WORKDIR/SCENARIO.json. The pipeline needs the real model's layers, so this uses a
tiny real BERT / ALBERT (pretrain.model) and the real objective, on the toy batches of toy.py.
A step's global batch is `global_batch(SEED, step, M, MICRO)` (M micro-batches); replica d of an
engine with dp replicas and grad_accum g trains micro-batches d, d + dp, ... (g of them), so a
pipeline engine and a plain one see the same examples whenever M = g * dp for both.
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from toy import SEQ, VOCAB, global_batch  # noqa: E402

from parallel.checkpoint import inspect_checkpoint, model_signature  # noqa: E402
from parallel.config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig  # noqa: E402
from parallel.engine import build_engine, layout_of  # noqa: E402
from parallel.topology import all_gather_object, all_reduce_sum, barrier, detect  # noqa: E402
from pretrain.data.config import ObjectiveConfig  # noqa: E402
from pretrain.model import ModelConfig, build_model  # noqa: E402
from pretrain.objectives import build_objective  # noqa: E402

SEED, MICRO = 1234, 4
STAT_KEYS = ("mlm_loss_sum", "mlm_correct", "mlm_count", "sentence_loss_sum", "sentence_correct", "sentence_count")


def loss_fn(cfg: ModelConfig):
    """The trainer's objective for this model: MLM + SOP."""
    return build_objective(ObjectiveConfig(name="mlm_sop", sentence_task="sop"), cfg)


def model_cfg(arch: str, dropout: float = 0.0, checkpointing: bool = False) -> ModelConfig:
    base = dict(arch=arch, vocab_size=VOCAB, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=48,
                max_position_embeddings=2 * SEQ, hidden_dropout=dropout, attention_dropout=dropout,
                gradient_checkpointing=checkpointing)
    if arch == "albert":
        base.update(embedding_size=16)
    if arch == "modernbert":  # global, local, global, local: windows of +-4 tokens in rows of 16
        base.update(linear_bias=False, norm_bias=False, local_attention=8, global_attn_every_n_layers=2,
                    layer_norm_eps=1e-5, sentence_head="sop")
    return ModelConfig(**base)


def packed(batch: dict) -> dict:
    """The toy rows as packed rows of two examples each (cut at half the real length): positions
    restart, a [B, L] sentence label at each example's first token."""
    out = dict(batch)
    lengths = batch["attention_mask"].sum(1)
    pos = torch.zeros_like(batch["input_ids"])
    sentence = torch.full_like(batch["input_ids"], -100)
    for r, n in enumerate(lengths.tolist()):
        k = n // 2
        pos[r, :k] = torch.arange(k)
        pos[r, k:n] = torch.arange(n - k)
        sentence[r, 0] = batch["sentence_label"][r]
        sentence[r, k] = 1 - batch["sentence_label"][r]
    out["position_ids"], out["sentence_label"] = pos, sentence
    return out


def make(stages, arch="bert", zero=0, dtype="fp32", gas=4, dropout=0.0, checkpointing=False, optim="adamw",
         resume_from=None, partition="parameters", wrap=None):
    """An engine as the trainer builds it (seed, then build_model); resume_from is inspected first."""
    topo = detect(pipeline_stages=stages)
    torch.manual_seed(SEED)
    model = build_model(model_cfg(arch, dropout, checkpointing))
    loss = loss_fn(model.cfg) if wrap is None else wrap(loss_fn(model.cfg))
    parallel = ParallelConfig(zero_stage=zero, pipeline_stages=stages, pipeline_partition=partition)
    precision = PrecisionConfig(dtype=dtype)
    resume = (inspect_checkpoint(resume_from, model_signature(model), layout_of(topo, parallel, precision))
              if resume_from else None)
    engine = build_engine(model, loss, parallel, precision, OptimConfig(name=optim, lr=3e-3, grad_clip=1.0),
                          ScheduleConfig(name="linear", warmup_steps=2), total_steps=20, micro_batch_size=MICRO,
                          grad_accum=gas, topo=topo, seed=SEED, resume=resume)
    client = engine.load(resume) if resume else None
    return engine, client


def run(engine, m_global, stop, save_at=None, save_dir=None, pack=False):
    """Train until global step `stop` on global batches of m_global micro-batches."""
    topo, gas = engine.topo, engine.grad_accum
    assert gas * topo.dp_size == m_global
    out = []
    while engine.global_step < stop:
        micros = global_batch(SEED, engine.global_step, m_global, MICRO)
        if pack:
            micros = [packed(m) for m in micros]
        out.append(engine.train_step([micros[i * topo.dp_size + topo.dp_rank] for i in range(gas)]))
        if save_at is not None and engine.global_step == save_at:
            engine.save(save_dir, {"step": engine.global_step})
    return out


def eval_batches():
    """Held-out batches of three shapes: full, partial (3 rows) and a one-row short one."""
    full = global_batch(SEED + 1, 0, 1, MICRO)[0]
    partial = global_batch(SEED + 1, 1, 1, 3)[0]
    short = {k: v[:1, :8] if v.dim() == 2 else v[:1] for k, v in global_batch(SEED + 1, 2, 1, 1)[0].items()}
    return [full, partial, short]


def evaluate(engine):
    """Stats over all eval batches, summed over the world. A pipeline replica evaluates every
    batch on every stage; plain data parallel splits the batches over ranks."""
    topo = engine.topo
    batches = eval_batches()
    mine = batches if topo.pipeline_stages > 1 else batches[topo.dp_rank::topo.dp_size]
    totals = torch.zeros(len(STAT_KEYS), dtype=torch.float64)
    for b in mine:
        stats = engine.eval_step(b)
        totals += torch.tensor([float(stats.get(k, 0.0)) for k in STAT_KEYS], dtype=torch.float64)
    return all_reduce_sum(totals).tolist()


def uneven_eval(engine) -> dict:
    """The trainer's evaluate() over the eval batches split unevenly between the two replicas
    (2 + 1, and 3 + 0: one replica has no data at all), against every batch on every replica."""
    from pretrain.train.evaluate import evaluate as trainer_evaluate

    batches, topo = eval_batches(), engine.topo
    everywhere = torch.tensor(evaluate(engine)) / topo.dp_size   # each replica evaluated all of them
    out = {"expected": everywhere.tolist()}
    for name, split in (("two_one", (batches[:2], batches[2:])), ("three_none", (batches, []))):
        out[name] = trainer_evaluate(engine, engine.loss_fn, lambda split=split: split[topo.dp_rank], None)
    return out


def weight_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))[:5]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def slim(metrics: list[dict]) -> list[dict]:
    return [{k: float(v) for k, v in m.items()} for m in metrics]


def scenario_two(work):
    """2 processes: 2 stages x 1 replica against the plain engine on 2 ranks, and checkpoints."""
    res = {}
    # BERT, ZeRO-1: per-step metrics, eval stats and weights equal; both save at step 2.
    plain, _ = make(1, "bert", zero=1, gas=2)
    res["bert_plain"] = slim(run(plain, 4, 4, save_at=2, save_dir=os.path.join(work, "plain_z1")))
    res["bert_plain_eval"] = evaluate(plain)
    plain_weights = plain.consolidated_state_dict()
    pipe, _ = make(2, "bert", zero=1, gas=4)
    res["bert_pipe"] = slim(run(pipe, 4, 4, save_at=2, save_dir=os.path.join(work, "pipe_z1")))
    res["bert_pipe_all_ranks"] = all_gather_object(res["bert_pipe"])
    shorter = [{k: v[:, :8] if v.dim() == 2 else v for k, v in b.items()} for b in global_batch(SEED, 9, 4, MICRO)]
    try:
        pipe.train_step(shorter)
    except ValueError as e:  # refused before anything is sent: DeepSpeed caches shapes between stages
        res["shape_change"] = str(e)
    res["bert_pipe_eval"] = evaluate(pipe)
    res["bert_weight_diff"] = weight_diff(plain_weights, pipe.consolidated_state_dict())
    res["stage_params"] = all_gather_object(int(sum(p.numel() for p in pipe.module.parameters())))
    # ALBERT (shared layer tied across the stages), ZeRO-0 fp32 (our own clipping path).
    plain, _ = make(1, "albert", zero=0, gas=2)
    res["albert_plain"] = slim(run(plain, 4, 4))
    res["albert_plain_eval"] = evaluate(plain)
    plain_weights = plain.consolidated_state_dict()
    pipe, _ = make(2, "albert", zero=0, gas=4, partition="type:EncoderLayer")
    res["albert_pipe"] = slim(run(pipe, 4, 4, save_at=4, save_dir=os.path.join(work, "albert_z0")))
    res["albert_pipe_eval"] = evaluate(pipe)
    pipe_weights = pipe.consolidated_state_dict()
    res["albert_weight_diff"] = weight_diff(plain_weights, pipe_weights)
    if pipe.topo.rank == 0:
        torch.save(pipe_weights, os.path.join(work, "albert_z0_weights.pt"))
    # ModernBERT (rotary positions and local windows travel as position ids between the stages)
    # on packed rows of two examples, ZeRO-1.
    plain, _ = make(1, "modernbert", zero=1, gas=2)
    res["modernbert_plain"] = slim(run(plain, 4, 3, pack=True))
    plain_weights = plain.consolidated_state_dict()
    pipe, _ = make(2, "modernbert", zero=1, gas=4)
    res["modernbert_pipe"] = slim(run(pipe, 4, 3, pack=True))
    res["modernbert_weight_diff"] = weight_diff(plain_weights, pipe.consolidated_state_dict())
    # Dropout on: seeded per (step, micro-batch, rank), so a reload replays it bit for bit, and
    # per-layer activation checkpointing (recomputed with the same RNG state) changes nothing.
    ref, _ = make(2, "bert", zero=1, gas=4, dropout=0.1)
    res["dropout_ref"] = slim(run(ref, 4, 4, save_at=2, save_dir=os.path.join(work, "dropout")))
    ref_weights = ref.consolidated_state_dict()
    again, client = make(2, "bert", zero=1, gas=4, dropout=0.1, resume_from=os.path.join(work, "dropout"))
    res["dropout_client"] = client
    res["dropout_resumed"] = slim(run(again, 4, 4))
    ckpt, _ = make(2, "bert", zero=1, gas=4, dropout=0.1, checkpointing=True)
    res["checkpointing"] = slim(run(ckpt, 4, 4))
    res["checkpointing_weight_diff"] = weight_diff(ref_weights, ckpt.consolidated_state_dict())
    # bf16 (ZeRO-1) and LAMB.
    res["bf16"] = slim(run(make(2, "bert", zero=1, dtype="bf16", gas=4)[0], 4, 6))
    res["lamb_plain"] = slim(run(make(1, "bert", zero=0, gas=2, optim="lamb")[0], 4, 3))
    res["lamb_pipe"] = slim(run(make(2, "bert", zero=0, gas=4, optim="lamb")[0], 4, 3))
    res["guard"] = guard(work)
    # Plain references on the 8-micro-batch global batch of the 4-process pipeline runs.
    for arch, zero in (("bert", 1), ("albert", 0)):
        plain, _ = make(1, arch, zero=zero, gas=4)
        res[f"{arch}_plain8"] = slim(run(plain, 8, 3))
        weights = plain.consolidated_state_dict()
        if plain.topo.rank == 0:
            torch.save(weights, os.path.join(work, f"{arch}_plain8_weights.pt"))
    return res


def guard(work):
    """The UpdateGuard under a pipeline: the last stage's NaN loss, or NaN gradients with a
    finite loss, drop the update on every rank; a running engine reloads its checkpoint exactly."""
    from _worker import _NanGrad

    res = {}
    for zero, dtype in ((0, "fp32"), (1, "bf16")):
        poison = {"kind": None}

        class Poisoned:
            """The objective, with a NaN loss or NaN gradients when asked."""

            def __init__(self, inner):
                self.inner, self.normalizers, self.loss_fields = inner, inner.normalizers, inner.loss_fields

            def counts(self, batch):
                return self.inner.counts(batch)

            def __call__(self, out, batch, normalizers):
                loss, stats = self.inner(out, batch, normalizers)
                if poison["kind"] == "loss":  # runs on the last stage only
                    loss = loss * float("nan")
                elif poison["kind"] == "grad":
                    loss = _NanGrad.apply(loss)
                return loss, stats

        engine, _ = make(2, "bert", zero=zero, dtype=dtype, gas=4, wrap=Poisoned)
        out = {"clean": slim(run(engine, 4, 2))}
        path = os.path.join(work, f"guard-z{zero}-{dtype}")
        engine.save(path, {"step": 2})
        weights, lr = engine.consolidated_state_dict(), engine.lr
        for kind in ("loss", "grad"):
            poison["kind"] = kind
            micros = global_batch(SEED, 2, 4, MICRO)
            out[kind] = slim([engine.train_step(micros)])[0]
            poison["kind"] = None
            after = engine.consolidated_state_dict()
            out[f"{kind}_unchanged"] = all(torch.equal(weights[k], after[k]) for k in weights)
            out[f"{kind}_lr_same"] = engine.lr == lr
        out["finite"] = engine.state_is_finite()
        out["global_step"] = engine.global_step
        out["after"] = slim([engine.train_step(global_batch(SEED, i, 4, MICRO)) for i in (2, 3)])
        engine.load(inspect_checkpoint(path, engine.signature, engine.layout))  # a running engine goes back
        out["reloaded_step"] = engine.global_step
        out["reloaded"] = slim([engine.train_step(global_batch(SEED, i, 4, MICRO)) for i in (2, 3)])
        res[f"z{zero}-{dtype}"] = out
    return res


def scenario_four(work):
    """4 processes: 2 stages x 2 replicas, and resumes that change the layout."""
    res = {}
    for arch, zero in (("bert", 1), ("albert", 0)):
        pipe, _ = make(2, arch, zero=zero, gas=4)
        res[f"{arch}_pipe8"] = slim(run(pipe, 8, 3))
        res[f"{arch}_pipe8_all_ranks"] = all_gather_object(res[f"{arch}_pipe8"])
        weights = pipe.consolidated_state_dict()
        ref = torch.load(os.path.join(work, f"{arch}_plain8_weights.pt"))
        res[f"{arch}_weight_diff8"] = weight_diff(ref, weights)
    res["uneven_eval"] = uneven_eval(pipe)
    # The 2-stage x 1-replica checkpoint (step 2, 4 micro-batches per step) in other layouts.
    src = os.path.join(work, "pipe_z1")
    for name, stages, zero, gas in (("pp2x2", 2, 1, 2), ("pp4x1", 4, 1, 4), ("plain4_z2", 1, 2, 1)):
        engine, client = make(stages, "bert", zero=zero, gas=gas, resume_from=src)
        res[name] = {"client": client, "metrics": slim(run(engine, 4, 4))}
    engine, client = make(2, "bert", zero=1, gas=2, resume_from=os.path.join(work, "plain_z1"))
    res["plain_to_pp2x2"] = {"client": client, "metrics": slim(run(engine, 4, 4))}
    barrier()
    return res


def main():
    scenario, work = sys.argv[1], sys.argv[2]
    res = globals()[f"scenario_{scenario}"](work)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(work, f"{scenario}.json"), "w") as f:
            json.dump(res, f, default=str)


if __name__ == "__main__":
    main()
