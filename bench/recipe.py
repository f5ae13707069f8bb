"""Recipes at equal wall-clock: ours classic vs ours modern vs plain transformers loops (results:
docs/benchmarks.md "Recipes").

    .venv/bin/python bench/recipe.py                          # demo corpus, 150 s per run (~20 min, 2 cores)
    .venv/bin/python bench/recipe.py --data DIR --seconds 240 --runs ours-modern,hf-modernbert
    .venv/bin/python bench/recipe.py --text corpus.txt        # any text file, prepared here first

Every run trains for the same training wall-clock (--seconds), on the same prepared shards, at
the same sequence length and global batch (--seq, --batch):
  ours-classic   pretrain-launch model=bert-mini recipe=classic (MLM + SOP, as a user gets it),
                 2 ranks, ZeRO-2, precision=auto, trainer.max_time=--seconds
  ours-modern    pretrain-launch model=modernbert-mini recipe=modern, the same launch
  hf-bert        transformers BertForMaskedLM in a run_mlm-style loop: documents as [CLS] doc [SEP]
                 concatenated and cut into --seq blocks (run_mlm's group_texts), shuffled,
                 DataCollatorForLanguageModeling, torch AdamW (no decay on biases and norms),
                 transformers' scheduler over the steps that fit (calibrated on 5 steps of a
                 throwaway model first, as a user would size max_steps), grad clip 1.0; 1 process
                 with 2 threads; knobs (shape, masking rate, lr, betas, eps, weight decay, dropout,
                 schedule and its warmup/decay fractions) read from ours-classic's composed config
  hf-modernbert  ModernBertForMaskedLM, the same loop, knobs from ours-modern's config
One evaluator for all: each model loaded with transformers' AutoModelForMaskedLM (ours from its
export), scored on the same held-out batches (our eval loader over the valid split, one
document piece per row, 15% masking, seed fixed): masked-LM accuracy. Real tokens/s and fill
come from each run (ours: the trainer's metrics; the HF loops: every position is a real token).
Then each backbone is fine-tuned with pretrain-finetune (full and LoRA) on the demo "topic" task.
Prints a markdown table and the CPU capability and precision; writes results.json in --work.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUNS = ("ours-classic", "ours-modern", "hf-bert", "hf-modernbert")
OURS = {"ours-classic": ("bert-mini", "classic"), "ours-modern": ("modernbert-mini", "modern")}
HF_KNOBS_FROM = {"hf-bert": "ours-classic", "hf-modernbert": "ours-modern"}
FT_METHODS = ("full", "lora")


def run(cmd: list[str], **kw) -> None:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, **kw)


def env() -> dict:
    return dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))


# ------------------------------------------------------------------ data
def prepared(work: Path, data: str | None, text: str | None) -> Path:
    """A prepared directory: --data as given, else --text (or the demo corpus) prepared once here."""
    if data:
        return Path(data)
    out = work / "data"
    if not (out / "manifest.json").is_file():
        if text:
            inputs = text
        else:
            from pretrain.prepare.demo_corpus import write_demo_corpus

            write_demo_corpus(str(work / "corpus"))
            inputs = f"{work / 'corpus'}/*"
        run([sys.executable, "-m", "launch.prepare", f"input={inputs}", f"output={out}", "tokenizer.vocab_size=8192",
             "validation_fraction=0.02", "progress=false"])
    return out


def launch_overrides(name: str, data: Path, a) -> list[str]:
    preset, recipe = OURS[name]
    return [f"model={preset}", f"recipe={recipe}", f"data.path={data}", f"data.max_seq_len={a.seq}",
            f"data.micro_batch_size={a.batch // 2}", "cluster.nproc=2", "parallel=zero2", "precision=auto",
            "trainer.max_steps=null", f"trainer.max_time={a.seconds}", "trainer.eval_every=0",
            "trainer.checkpoint_every=1000000", "trainer.log_every=1", "trainer.progress=false",
            f"run.seed={a.seed}", f"data.seed={a.seed}", *a.override]


def composed(name: str, data: Path, a):
    """The validated config pretrain-launch composes for this run (the HF loops copy its knobs)."""
    from hydra import compose, initialize_config_module

    from pretrain.train.config import validate

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["run.name=x", *launch_overrides(name, data, a)])
    cfg = dict(cfg)
    cfg.pop("hydra", None)
    return validate(cfg)


# ------------------------------------------------------------------ ours
def ours(name: str, data: Path, work: Path, a) -> dict:
    root = work / "runs"
    t0 = time.perf_counter()
    run([sys.executable, "-m", "launch.train", f"run.root={root}", f"run.name={name}", "run.fresh=true",
         *launch_overrides(name, data, a)], env=env(), stdout=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if "train/tokens_per_s" in r]
    last = train[-1]
    return {"model_dir": str(root / name / "export"), "steps": last["step"], "tokens": last["train/consumed_tokens"],
            "tokens_per_s": last["train/consumed_tokens"] / last["train/seconds"],
            "fill": statistics.mean(r["train/fill"] for r in train), "wall_s": time.perf_counter() - t0}


# ------------------------------------------------------------------ plain transformers loop
def documents(data: Path, split: str, rng: random.Random):
    """Token ids of every document of `split`, shard order shuffled, forever (one epoch after another)."""
    import webdataset as wds

    from pretrain.shardformat import decode_document, load_manifest

    urls = load_manifest(str(data)).shard_urls(split)
    while True:
        order = list(urls)
        rng.shuffle(order)
        for url in order:
            for sample in wds.tarfile_samples([{"url": url}]):
                yield decode_document(sample).ids


def blocks(data: Path, seq: int, seed: int, cls: int, sep: int, shuffle_buffer: int = 2048):
    """run_mlm's group_texts: [CLS] doc [SEP] concatenated, cut into `seq`-token blocks, shuffled."""
    rng = random.Random(seed)
    buffer, pending = [], []
    for ids in documents(data, "train", rng):
        pending.extend([cls, *ids.tolist(), sep])
        while len(pending) >= seq:
            buffer.append(pending[:seq])
            pending = pending[seq:]
            if len(buffer) >= shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))


def hf_model(cfg, vocab: int, special: dict):
    from transformers import AutoModelForMaskedLM

    from pretrain.hf.convert import to_hf_config
    from pretrain.model.config import ModelConfig
    from omegaconf import OmegaConf

    fields = OmegaConf.to_container(cfg.model, resolve=True)
    mcfg = ModelConfig(**{**fields, "vocab_size": vocab, "init_from": None})
    hf_config = to_hf_config(mcfg, special)
    return AutoModelForMaskedLM.from_config(hf_config)


def hf_loop(name: str, data: Path, work: Path, a) -> dict:
    """A plain transformers loop with the knobs of the ours-* run it is compared with."""
    import torch
    from transformers import DataCollatorForLanguageModeling, get_scheduler

    from parallel.precision import resolve_precision
    from pretrain.hf.export import save_tokenizer
    from pretrain.shardformat import load_manifest

    cfg = composed(HF_KNOBS_FROM[name], data, a)
    manifest = load_manifest(str(data))
    out = work / "runs" / name
    tokenizer = save_tokenizer(data / "tokenizer.json", out)
    special = {"cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id, "pad": tokenizer.pad_token_id}
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.objective.mlm_probability, return_tensors="pt")
    dtype = resolve_precision("auto").dtype
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    torch.set_num_threads(2)

    def new_model_and_optimizer():
        torch.manual_seed(a.seed)
        model = hf_model(cfg, manifest.vocab_size, special)
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n.lower()]
        decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "norm" in n.lower())]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
        return model, optimizer

    def step(model, optimizer, batch) -> None:
        with autocast:
            loss = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"]),
                         labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    stream = blocks(data, a.seq, a.seed, special["cls"], special["sep"])

    def next_batch():
        return collator([{"input_ids": next(stream)} for _ in range(a.batch)])

    # Size the schedule as a run_mlm user would: steps that fit = budget / step time (5 steps).
    model, optimizer = new_model_and_optimizer()
    model.train()
    times = []
    for _ in range(6):
        batch = next_batch()
        t0 = time.perf_counter()
        step(model, optimizer, batch)
        times.append(time.perf_counter() - t0)
    total = max(10, int(a.seconds / statistics.median(times[1:])))
    s = cfg.schedule
    warmup = int(s.warmup_steps) or int(round(s.warmup_fraction * total))
    kind = {"wsd": "warmup_stable_decay", "constant": "constant_with_warmup"}.get(s.name, s.name)
    extra = {"num_decay_steps": int(round(s.decay_fraction * total)), "decay_type": "linear",
             "min_lr_ratio": s.min_lr_ratio} if s.name == "wsd" else {}
    if s.name == "cosine":
        kind, extra = "cosine_with_min_lr", {"min_lr_rate": s.min_lr_ratio}

    model, optimizer = new_model_and_optimizer()
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total,
                              scheduler_specific_kwargs=extra)
    model.train()
    steps, wait, t_start = 0, 0.0, time.perf_counter()
    while time.perf_counter() - t_start < a.seconds:
        t0 = time.perf_counter()
        batch = next_batch()
        wait += time.perf_counter() - t0
        step(model, optimizer, batch)
        scheduler.step()
        steps += 1
    seconds = time.perf_counter() - t_start
    model.save_pretrained(out)
    return {"model_dir": str(out), "steps": steps, "planned_steps": total, "tokens": steps * a.batch * a.seq,
            "tokens_per_s": steps * a.batch * a.seq / seconds, "fill": 1.0, "wall_s": seconds}


# ------------------------------------------------------------------ one evaluator
def evaluate(model_dir: str, data: Path, a) -> dict:
    """Masked-LM accuracy at 15% on the valid split, the same batches for every model."""
    import torch
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    from pretrain.data import build_eval_loader
    from pretrain.data.config import DataConfig, ObjectiveConfig

    hf_logging.set_verbosity_error()  # our BERT export is BertForPreTraining: the pooler/NSP weights go unused
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    loader = build_eval_loader(DataConfig(path=str(data), max_seq_len=a.seq, micro_batch_size=32, num_workers=0,
                                          packing=False, seed=0),
                               ObjectiveConfig(sentence_task="none", eval_mlm_probability=0.15), 0, 1)
    correct = count = 0
    with torch.no_grad():
        for batch in loader:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            masked = batch["labels"] != -100
            correct += int((logits.argmax(-1)[masked] == batch["labels"][masked]).sum())
            count += int(masked.sum())
    return {"mlm_acc": correct / max(count, 1), "masked_tokens": count}


# ------------------------------------------------------------------ fine-tuning
def finetune(model_dir: str, name: str, method: str, task: dict, work: Path, a) -> float | str:
    out = work / "ft"
    cmd = [sys.executable, "-m", "launch.finetune", f"model={model_dir}", f"run.root={out}", f"run.name={name}-{method}",
           "run.fresh=true", f"task.train={task['train']}", f"task.validation={task['validation']}", f"method={method}",
           f"trainer.max_epochs={a.ft_epochs}", "trainer.batch_size=32", "trainer.max_seq_len=64",
           "trainer.progress=false", "tracker=none", "precision=fp32"]
    print("+ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True)
    if result.returncode:
        lines = [x for x in result.stderr.strip().splitlines() if x.strip()]
        return "not run: " + (lines[-1] if lines else f"exit code {result.returncode}")
    summary = json.loads((out / f"{name}-{method}" / "summary.json").read_text())
    return summary[f"best/{summary['primary_metric'].replace('/', '_')}"]


def device_line(data: Path, a) -> str:
    import torch

    from parallel.device import compute_device, describe
    from parallel.precision import resolve_precision

    p = resolve_precision("auto")
    return (f"torch {torch.__version__}; cpu capability {torch.backends.cpu.get_cpu_capability()}; "
            f"{describe(compute_device())}; precision=auto -> {p.dtype}; data {data}; seq {a.seq}, global batch {a.batch}, "
            f"{a.seconds} s per run")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/bench-recipe")
    p.add_argument("--data", default=None, help="a prepared directory (default: the demo corpus, prepared here)")
    p.add_argument("--text", default=None, help="a text file/glob to prepare instead of the demo corpus")
    p.add_argument("--seconds", type=int, default=150, help="training wall-clock per run")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=64, help="global batch (ours: 2 ranks x batch/2)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--ft-epochs", type=int, default=2, help="fine-tuning epochs per backbone and method (0 = skip)")
    p.add_argument("--override", action="append", default=[], help="extra pretrain-launch override for ours-* runs")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = prepared(work, a.data, a.text)
    names = a.runs.split(",")
    results = {}
    for name in names:
        res = ours(name, data, work, a) if name in OURS else hf_loop(name, data, work, a)
        res.update(evaluate(res["model_dir"], data, a))
        results[name] = res
        print(json.dumps({name: res}), flush=True)
    if a.ft_epochs:
        from pretrain.finetune.demo_task import write_task

        task = write_task(work / "task", "topic", "tsv", 900, 300, seed=0)
        for name in names:
            for method in FT_METHODS:
                results[name][f"ft_{method}"] = finetune(results[name]["model_dir"], name, method, task, work, a)
                print(json.dumps({name: {f"ft_{method}": results[name][f"ft_{method}"]}}), flush=True)
    line = device_line(data, a)
    (work / "results.json").write_text(json.dumps({"device": line, "args": vars(a), "results": results}, indent=2))
    print(f"\n{line}\n")
    print("| run | steps | real tokens/s | fill | eval masked-LM acc (15%) | fine-tune full | fine-tune LoRA |")
    print("|---|---|---|---|---|---|---|")

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else (v or "-")

    for name, r in results.items():
        print(f"| {name} | {r['steps']} | {r['tokens_per_s']:,.0f} | {r['fill']:.2f} | {r['mlm_acc']:.3f} | "
              f"{fmt(r.get('ft_full'))} | {fmt(r.get('ft_lora'))} |")


if __name__ == "__main__":
    main()
