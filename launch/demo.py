"""`make demo`: the whole system on real text in a few minutes on a laptop.

Builds the offline demo corpus (CPython's own documentation), prepares shards, pretrains a
ModernBERT with the modern recipe (masked LM at 30%, warmup-stable-decay placed by the time
budget) on 2 local ranks (ZeRO-2, precision=auto), evaluates at 15% masking, exports to Hugging
Face format, prints the masked-LM accuracy and asks the exported model to fill masks. Every step
is the public CLI a user would type; the commands are printed.

The model is sized to the machine (machines differ ~10x: AVX2-only CPUs train fp32, AVX512-BF16 /
AMX ones bf16): a few timed training steps of each candidate, largest first, in the dtype
precision=auto picks here, decide the first one that gets the steps it needs to learn (measured,
docs/benchmarks.md) into the training budget; the schedule then follows the time used.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

BIN = os.path.dirname(sys.executable)
VOCAB = 8192


@dataclass(frozen=True)
class Candidate:
    """One model/batch the demo can train, with the steps that make it worth choosing."""
    preset: str
    micro_batch: int
    seq_len: int
    lr: float
    min_steps: int


# The step counts are the ones measured for the BERT shapes of the same width and depth on this
# corpus (bert-mini only paid off over bert-tiny from ~1200 steps; docs/benchmarks.md "make
# demo"). lr: the modern recipe's for the mini shape (measured, docs/benchmarks.md "Recipes"),
# 2e-3 for the tiny one (as measured for bert-tiny).
CANDIDATES = (  # largest first
    Candidate("modernbert-mini", 64, 64, 1e-3, 1200),
    Candidate("modernbert-tiny", 64, 64, 2e-3, 300),
)
# Real step (2 ranks, DeepSpeed ZeRO-2, loader workers) / probe step (one process, one thread):
# measured 1.5x on a quiet 2-core machine, 3-5x under heavy load from other processes (the
# collectives wait for the other rank to be scheduled). Planning for the quiet case uses the
# budget there; under load the wall-clock budget ends the run earlier, the learning rate not
# fully decayed, which costs less than planning too few steps everywhere.
STEP_OVERHEAD = 1.6
MAX_STEPS = 2000


# Where even the smallest candidate's min_steps do not fit, the training budget may grow to this
# (seconds): the rest of `make demo` (venv, corpus, prepare, start-up, export) takes ~4 of its
# 10 minutes on 2 cores.
MAX_TIME_CAP = 330


@dataclass(frozen=True)
class Plan:
    candidate: Candidate
    steps: int
    max_time: float           # training wall-clock budget, seconds
    probe_s: float            # median probe step, seconds
    note: str


def run(cmd: list[str], env: Optional[dict] = None) -> None:
    print("\n$ " + shlex.join(cmd), flush=True)
    code = subprocess.call(cmd, env=env)
    if code:
        raise SystemExit(f"demo: step failed with exit code {code}: {shlex.join(cmd)}")


def probe_step_seconds(candidate: Candidate, dtype: str, steps: int = 3) -> float:
    """Median time of a training step (forward, backward, AdamW) of `candidate` in `dtype`, on
    ONE thread: each of the 2 ranks gets one core's share (torchrun sets OMP_NUM_THREADS=1)."""
    import torch
    from omegaconf import OmegaConf

    import conf
    from pretrain.model import ModelConfig, build_model

    preset = OmegaConf.load(os.path.join(os.path.dirname(conf.__file__), "model", f"{candidate.preset}.yaml"))
    fields = dict(OmegaConf.to_container(preset), vocab_size=VOCAB, hidden_dropout=0.0, attention_dropout=0.0,
                  sentence_head="none")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(ModelConfig(**fields)).to({"bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
        optim = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
        shape = (candidate.micro_batch, candidate.seq_len)
        ids = torch.randint(5, VOCAB, shape)
        labels = torch.where(torch.rand(shape) < 0.15, ids, torch.full_like(ids, -100))
        times = []
        for _ in range(steps + 1):  # the first is a warm-up (allocator, kernel choice)
            t0 = time.perf_counter()
            out = model(ids, torch.zeros_like(ids), torch.ones_like(ids), labels)
            torch.nn.functional.cross_entropy(out.mlm_logits.float(), out.mlm_labels, ignore_index=-100).backward()
            optim.step()
            optim.zero_grad()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])
    finally:
        torch.set_num_threads(threads)


def plan(budget_s: float, dtype: str, probe=probe_step_seconds) -> Plan:
    """The first candidate whose min_steps fit into `budget_s` at the probed speed, with the
    number of steps that fit (capped). Where none fits, the smallest one with its min_steps and
    a budget stretched up to MAX_TIME_CAP, and a note saying so."""
    for candidate in CANDIDATES:
        probe_s = probe(candidate, dtype)
        expected = probe_s * STEP_OVERHEAD
        steps = min(int(budget_s / expected), MAX_STEPS)
        if steps >= candidate.min_steps:
            return Plan(candidate, steps, budget_s, probe_s,
                        f"{candidate.preset}: ~{expected:.2f} s/step expected, {steps} steps fit into {budget_s:.0f} s")
    max_time = min(max(budget_s, candidate.min_steps * expected), MAX_TIME_CAP)
    return Plan(candidate, candidate.min_steps, max_time, probe_s,
                f"this machine is slower than the demo is sized for: {candidate.preset} needs {candidate.min_steps} "
                f"steps at ~{expected:.2f} s/step; training budget {max_time:.0f} s (at most {MAX_TIME_CAP} s)")


def final_eval(run_dir: str) -> Optional[dict]:
    """The last eval record of the run's metrics.jsonl."""
    path = os.path.join(run_dir, "metrics.jsonl")
    last = None
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                if '"eval/mlm_acc"' in line:
                    last = json.loads(line)
    return last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__)
    parser.add_argument("--work", default="data/demo", help="where corpus and shards go")
    parser.add_argument("--run", default="demo", help="run name under runs/")
    parser.add_argument("--max-time", type=float, default=240, help="training wall-clock budget in seconds")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--model", choices=[c.preset for c in CANDIDATES], default=None,
                        help="skip the speed probe and train this candidate")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="extra pretrain-launch overrides, applied last (e.g. data.packing=false)")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()

    raw, shards = os.path.join(args.work, "raw"), os.path.join(args.work, "shards")
    if not os.path.isdir(raw) or not os.listdir(raw):
        run([sys.executable, "-m", "pretrain.prepare.demo_corpus", raw])
    run([
        os.path.join(BIN, "pretrain-prepare"), f"input={raw}/*", f"output={shards}",
        f"tokenizer.vocab_size={VOCAB}", "validation_fraction=0.02",
    ])

    from parallel.precision import resolve_precision

    dtype = resolve_precision("auto").dtype  # what pretrain-launch precision=auto will pick here
    if args.model:
        candidate = next(c for c in CANDIDATES if c.preset == args.model)
        chosen = Plan(candidate, candidate.min_steps, args.max_time, 0.0, f"{candidate.preset} (--model)")
    else:
        chosen = plan(args.max_time, dtype)
    c = chosen.candidate
    print(f"\ndemo: {dtype} on this machine; {chosen.note}", flush=True)
    # A wall-clock budget: recipe=modern places warmup and decay by the time used, so the run
    # decays at the end of its budget however fast this machine turns out to be (the probe only
    # picks the model). MLM only (ModernBERT has no sentence head; objective=auto follows it).
    run([
        os.path.join(BIN, "pretrain-launch"), f"run.name={args.run}", f"data.path={shards}",
        f"model={c.preset}", "recipe=modern", "parallel=zero2", "precision=auto",
        f"data.max_seq_len={c.seq_len}", f"data.micro_batch_size={c.micro_batch}", f"optim.lr={c.lr}",
        f"cluster.nproc={args.nproc}", "trainer.max_steps=null", f"trainer.max_time={chosen.max_time:.0f}",
        f"trainer.eval_every={max(100, chosen.steps // 3)}", f"trainer.checkpoint_every={max(200, chosen.steps // 2)}",
        "trainer.log_every=10", "run.fresh=true", *args.overrides,
    ])
    run_dir = os.path.join("runs", args.run)
    export = os.path.join(run_dir, "export")
    fill_mask(export)
    result = final_eval(run_dir)
    if result is not None:
        print(f"\neval masked-LM accuracy: {result['eval/mlm_acc']:.3f} at step {result['step']} "
              f"({c.preset}, {dtype}; {int(result.get('eval/masked_tokens', 0))} masked tokens of the validation split)")
    print(
        f"demo: done in {time.perf_counter() - t_start:.0f} s\n"
        f"\nExported Hugging Face model: {export}\n"
        f"Metrics: {run_dir}/metrics.jsonl; TensorBoard logs: {run_dir}/tensorboard; config: {run_dir}/config.yaml\n"
        f"View them with:  {os.path.join(BIN, 'tensorboard')} --logdir runs --host 127.0.0.1\n"
        f"Compare runs:    {os.path.join(BIN, 'pretrain-compare')} {run_dir} --out compare.png"
    )
    return 0


def fill_mask(export_dir: str) -> None:
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    # A BERT export (demo overrides may pick one) is BertForPreTraining: fill-mask loads it as
    # BertForMaskedLM, and the unused pooler/NSP weights would otherwise print a load report.
    hf_logging.set_verbosity_error()
    fill = pipeline("fill-mask", model=export_dir, tokenizer=export_dir, device="cpu")
    for text in ("Return True [MASK] the object is callable.", "Return [MASK] if the file does not exist.",
                 "Return the number [MASK] items in the list.", "If the argument is omitted, a [MASK] is raised."):
        print(f"\nfill-mask: {text}")
        for guess in fill(text, top_k=5):
            print(f"  {guess['score']:.3f}  {guess['token_str']}")


if __name__ == "__main__":
    raise SystemExit(main())
