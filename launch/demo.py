"""`make demo`: the whole system on real text in a few minutes on a laptop.

Builds the offline demo corpus (CPython's own documentation), prepares shards, pretrains
bert-mini with MLM+SOP on 2 local ranks (ZeRO-2, bf16, gradient checkpointing), evaluates,
exports to Hugging Face format and asks the exported model to fill a mask. Every step is the
public CLI a user would type; the commands are printed.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

BIN = os.path.dirname(sys.executable)


def run(cmd: list[str]) -> None:
    print("\n$ " + shlex.join(cmd), flush=True)
    code = subprocess.call(cmd)
    if code:
        raise SystemExit(f"demo: step failed with exit code {code}: {shlex.join(cmd)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__)
    parser.add_argument("--work", default="data/demo", help="where corpus and shards go")
    parser.add_argument("--run", default="demo", help="run name under runs/")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--max-time", default="240", help="training wall-clock budget in seconds")
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args(argv)

    raw, shards = os.path.join(args.work, "raw"), os.path.join(args.work, "shards")
    if not os.path.isdir(raw) or not os.listdir(raw):
        run([sys.executable, "-m", "pretrain.prepare.demo_corpus", raw])
    run([
        os.path.join(BIN, "pretrain-prepare"), f"input={raw}/*", f"output={shards}",
        "tokenizer.vocab_size=8192", "validation_fraction=0.02",
    ])
    run([
        os.path.join(BIN, "pretrain-launch"), f"run.name={args.run}", f"data.path={shards}",
        "model=bert-mini", "parallel=zero2", "precision=bf16", "model.gradient_checkpointing=true",
        f"cluster.nproc={args.nproc}", f"trainer.max_steps={args.steps}", f"trainer.max_time={args.max_time}",
        "trainer.eval_every=100", "trainer.checkpoint_every=100", "trainer.log_every=10",
        "optim.lr=1e-3", "schedule.warmup_steps=30", "data.micro_batch_size=32", "run.fresh=true",
    ])
    export = os.path.join("runs", args.run, "export")
    fill_mask(export)
    print(
        f"\nExported Hugging Face model: {export}\n"
        f"Metrics: runs/{args.run}/metrics.jsonl; TensorBoard logs: runs/{args.run}/tensorboard\n"
        f"View them with:  {os.path.join(BIN, 'tensorboard')} --logdir runs --host 127.0.0.1\n"
        f"Compare runs:    {os.path.join(BIN, 'pretrain-compare')} runs/{args.run} --out compare.png"
    )
    return 0


def fill_mask(export_dir: str) -> None:
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    # The export is BertForPreTraining; fill-mask loads it as BertForMaskedLM, and the unused
    # pooler/NSP weights would otherwise print a load report.
    hf_logging.set_verbosity_error()
    fill = pipeline("fill-mask", model=export_dir, tokenizer=export_dir, device="cpu")
    for text in ("The [MASK] statement is used to leave a loop.", "A list is a mutable [MASK] of items."):
        print(f"\nfill-mask: {text}")
        for guess in fill(text, top_k=5):
            print(f"  {guess['score']:.3f}  {guess['sequence']}")


if __name__ == "__main__":
    raise SystemExit(main())
