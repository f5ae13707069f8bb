"""End-to-end training benchmarks of `pretrain-launch`, in one run (results: docs/benchmarks.md).

    .venv/bin/python bench/train.py            # full: bf16 + fp32, 2 repeats (~15 min on 2 idle cores)
    .venv/bin/python bench/train.py --quick    # bf16 only, 1 repeat, small model for memory (< 4 min)

1. Throughput (tokens/s = real, non-padding tokens per second, as the trainer logs it) of the
   real CLI (`pretrain-launch`, a subprocess each time) vs plain PyTorch loops on the same data,
   iterated through our loader `pretrain.data.build_train_loader` over the same prepared shards
   (same seed, so the same batches), same model shape (bert-mini, vocab from the manifest), seq
   128, same micro-batch (32 per process), same AdamW settings (torch AdamW, foreach=False,
   weight decay groups, clipping 1.0), same precision:
     ours-2r-zero2   pretrain-launch, 2 ranks (torchrun sets OMP_NUM_THREADS=1 each), ZeRO-2
     ours-1r-zero0   pretrain-launch, 1 rank (2 intra-op threads), ZeRO-0 (parallel=single)
     plain-hf        transformers BertForPreTraining + torch AdamW, 1 process, 2 threads
     plain-ours      our PretrainingModel + torch AdamW, 1 process, 2 threads (no DeepSpeed, no
                     launcher: separates the model from the launcher/DeepSpeed overhead)
   bf16: DeepSpeed bf16 for ours (bf16 weights + fp32 master copy in the optimizer), autocast
   bf16 for the plain loops (fp32 weights). Steady state: the median of the per-interval
   tokens/s after dropping the first `--skip` intervals (also: the best interval); each config runs `--reps` times, the runs
   interleaved (A B C D A B C D ..., order rotated every repeat) because the machine is shared.
2. ZeRO 0/1/2/3 per-rank peak memory at world size 2 (`train/peak_mem_gb` = max RSS of rank 0,
   taken at the first log, before any checkpoint save) vs the ZeRO paper's model-state bytes
   (mixed precision, K=12: stage0 (2+2+K)P, stage1 (2+2+K/N)P, stage2 (2+(2+K)/N)P,
   stage3 (2+2+K)P/N; fp32: 4+4+8 partitioned the same way). The RSS baseline (a process that
   imports torch + deepspeed + our trainer, initialises the process group and pulls a batch;
   current RSS, see current_rss_gb) is measured and subtracted.
3. Checkpoint save: the trainer's own timing ("saved checkpoint <dir> in X.Xs", rank 0) of the
   memory runs (a save every 2 steps) vs `torch.save` of the same objects (every .pt file of the
   checkpoint loaded weights-only, as the trainer reads it, and re-saved serially, one process).

Hidden modes used by the orchestrator: --plain-worker JSON, --baseline-worker JSON.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------ helpers
def load_yaml(group: str, name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(REPO / "conf" / group / f"{name}.yaml"), resolve=True)


def model_config(preset: str, vocab_size: int):
    from pretrain.model.config import ModelConfig

    d = load_yaml("model", preset)
    d["vocab_size"] = vocab_size
    return ModelConfig(**d)


def manifest_vocab(data_dir: str) -> int:
    with open(os.path.join(data_dir, "manifest.json")) as f:
        return int(json.load(f)["tokenizer"]["vocab_size"])


def max_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # same formula as the trainer


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec=",.0f"):
    return "n/a" if x is None else format(x, spec)


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {msg}", flush=True)


# ------------------------------------------------------------------ plain loop (subprocess)
def plain_worker(spec: dict) -> dict:
    """A plain training loop: our loader -> model -> loss -> backward -> clip -> AdamW."""
    import contextlib

    import torch

    from pretrain.data import build_train_loader
    from pretrain.data.config import DataConfig, ObjectiveConfig

    torch.manual_seed(1234)
    # One example per row for every configuration: transformers' BertForPreTraining cannot attend
    # within packed rows, and this table compares engines on identical batches (packing has its
    # own benchmark, bench/packing.py).
    data_cfg = DataConfig(**{**load_yaml("data", "default"), "path": spec["data"], "packing": False,
                             "micro_batch_size": spec["micro_batch"], "max_seq_len": spec["seq"]})
    obj_cfg = ObjectiveConfig(**load_yaml("objective", "mlm_sop"))
    cfg = model_config(spec["model"], manifest_vocab(spec["data"]))
    if spec["impl"] == "hf":
        from transformers import BertForPreTraining

        from pretrain.hf.convert import to_hf_config

        model = BertForPreTraining(to_hf_config(cfg)).train()

        def loss_of(b):
            return model(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                         attention_mask=b["attention_mask"], labels=b["labels"],
                         next_sentence_label=b["sentence_label"]).loss
    else:
        from pretrain.model import build_model
        from pretrain.objectives import pretraining_loss

        model = build_model(cfg).train()

        def loss_of(b):
            out = model(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["labels"])
            n = float((b["labels"] != -100).sum().clamp_min(1))
            return pretraining_loss(out, b, n, obj_cfg)[0]

    from parallel.optim import param_groups

    groups = [{k: v for k, v in g.items() if k != "adapt"} for g in param_groups(model, 0.01)]
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, foreach=False)
    amp = spec["precision"] == "bf16"
    loader = build_train_loader(data_cfg, obj_cfg, 0, 1)
    it = iter(loader)
    windows, losses = [], []
    t_start = time.perf_counter()
    tokens, data_s, steps, t0 = 0, 0.0, 0, time.perf_counter()
    for step in range(1, spec["steps"] + 1):
        td = time.perf_counter()
        b = next(it)
        data_s += time.perf_counter() - td
        with torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
            loss = loss_of(b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        tokens += int(b["attention_mask"].sum())
        steps += 1
        if step % spec["log_every"] == 0:
            el = time.perf_counter() - t0
            windows.append({"step": step, "tokens_per_s": tokens / el, "data_wait": data_s / el,
                            "step_time": el / steps})
            tokens, data_s, steps, t0 = 0, 0.0, 0, time.perf_counter()
    return {"windows": windows, "threads": torch.get_num_threads(), "peak_mem_gb": max_rss_gb(),
            "wall_s": time.perf_counter() - t_start, "final_loss": losses[-1]}


def current_rss_gb() -> float:
    """VmRSS now. Used for the baseline instead of ru_maxrss: Linux carries the high-water mark of
    the process that forked us across execve, so a child of this (large) orchestrator would
    report the orchestrator's RSS."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return max_rss_gb()


def baseline_worker(spec: dict) -> dict:
    """RSS of a rank without model states: imports, process group (world 1), loader + one batch."""
    import torch  # noqa: F401
    import deepspeed  # noqa: F401

    import launch.worker  # noqa: F401
    import pretrain.train.loop  # noqa: F401
    from parallel.topology import detect, init_distributed
    from pretrain.data import build_train_loader
    from pretrain.data.config import DataConfig, ObjectiveConfig

    out = {"imports_gb": current_rss_gb()}
    try:
        init_distributed(detect())
    except Exception as e:  # noqa: BLE001 - report, still measure the rest
        out["init_error"] = str(e)[:200]
    data_cfg = DataConfig(**{**load_yaml("data", "default"), "path": spec["data"],
                             "micro_batch_size": spec["micro_batch"]})
    next(iter(build_train_loader(data_cfg, ObjectiveConfig(**load_yaml("objective", "mlm_sop")), 0, 1)))
    out["baseline_gb"] = current_rss_gb()
    from pretrain.model import build_model

    model = build_model(model_config(spec["model"], manifest_vocab(spec["data"])))  # noqa: F841 (kept alive)
    out["with_fp32_model_gb"] = current_rss_gb()
    return out


def run_hidden(mode: str, spec: dict, env=None, timeout=900) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, json.dumps(spec)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} failed (rc {p.returncode}): {p.stderr.strip().splitlines()[-3:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------ pretrain-launch (subprocess)
SAVE_RE = re.compile(r"saved checkpoint (\S+) in ([0-9.]+)s")


def launch(root: str, name: str, data: str, overrides: list[str], timeout=900) -> dict:
    cmd = [str(BIN / "pretrain-launch"), f"run.name={name}", f"run.root={root}", f"data.path={data}",
           "trainer.eval_every=0", "trainer.export_on_finish=false", "tracker=none", "trainer.progress=false",
           *overrides]
    logf = os.path.join(root, f"{name}.log")
    t0 = time.perf_counter()
    with open(logf, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
    wall = time.perf_counter() - t0
    text = open(logf, errors="replace").read()
    if rc != 0:
        raise RuntimeError(f"pretrain-launch {name} failed (rc {rc}); see {logf}: {text.strip().splitlines()[-1:]}")
    rows = []
    mpath = os.path.join(root, name, "metrics.jsonl")
    with open(mpath) as f:
        for line in f:
            r = json.loads(line)
            if "train/tokens_per_s" in r:
                rows.append(r)
    saves = [float(s) for _, s in SAVE_RE.findall(text)]
    ckpts = sorted(glob.glob(os.path.join(root, name, "checkpoints", "step_*")))
    return {"rows": rows, "saves_s": saves, "wall_s": wall, "cmd": cmd, "run_dir": os.path.join(root, name),
            "checkpoints": ckpts}


def steady(windows: list[dict], key: str, skip: int) -> float | None:
    vals = [w[key] for w in windows[skip:]]
    return statistics.median(vals) if vals else None


# ------------------------------------------------------------------ part 1: throughput
def throughput(args, data: str, root: str) -> dict:
    configs = []
    for prec in args.precisions:
        configs += [("ours-2r-zero2", prec), ("plain-hf", prec), ("ours-1r-zero0", prec), ("plain-ours", prec)]
    results = {f"{c}/{p}": [] for c, p in configs}
    common = ["model=bert-mini", "data.max_seq_len=128", "data.packing=false", f"data.micro_batch_size={args.micro_batch}",
              f"trainer.max_steps={args.steps}", f"trainer.log_every={args.log_every}",
              "trainer.checkpoint_every=1000000"]
    for rep in range(args.reps):
        order = configs[rep % len(configs):] + configs[:rep % len(configs)]
        for impl, prec in order:
            key = f"{impl}/{prec}"
            name = f"tp-{impl}-{prec}-{rep}"
            if impl.startswith("ours"):
                par = ["parallel=zero2", "cluster.nproc=2"] if impl == "ours-2r-zero2" else \
                      ["parallel=single", "cluster.nproc=1"]
                r = launch(root, name, data, common + par + [f"precision={prec}"])
                windows = [{"step": x["step"], "tokens_per_s": x["train/tokens_per_s"],
                            "data_wait": x["train/data_wait"], "step_time": x["train/step_time"]}
                           for x in r["rows"]]
                res = {"windows": windows, "wall_s": r["wall_s"], "peak_mem_gb": r["rows"][-1]["train/peak_mem_gb"],
                       "final_save_s": r["saves_s"][-1] if r["saves_s"] else None,
                       "final_loss": r["rows"][-1]["train/loss"]}
                shutil.rmtree(os.path.join(r["run_dir"], "checkpoints"), ignore_errors=True)
            else:
                res = run_hidden("--plain-worker", {"data": data, "impl": impl.split("-")[1], "precision": prec,
                                                    "model": "bert-mini", "micro_batch": args.micro_batch, "seq": 128,
                                                    "steps": args.steps, "log_every": args.log_every})
            res["tokens_per_s"] = steady(res["windows"], "tokens_per_s", args.skip)
            res["best_tokens_per_s"] = max(w["tokens_per_s"] for w in res["windows"][args.skip:])
            res["loadavg_after"] = os.getloadavg()[0]
            res["data_wait"] = steady(res["windows"], "data_wait", args.skip)
            res["step_time"] = steady(res["windows"], "step_time", args.skip)
            results[key].append(res)
            log(f"{key:22s} rep {rep}: {fmt(res['tokens_per_s'])} tok/s, step {res['step_time']:.3f}s, "
                f"data_wait {100 * res['data_wait']:.1f}%, wall {res['wall_s']:.0f}s, load {res['loadavg_after']:.1f}")
    return results


def throughput_table(results: dict, precisions: list[str]) -> list[str]:
    desc = {"ours-2r-zero2": "pretrain-launch, 2 ranks x 1 thread, ZeRO-2",
            "ours-1r-zero0": "pretrain-launch, 1 rank x 2 threads, ZeRO-0",
            "plain-hf": "HF BertForPreTraining + AdamW, 1 proc x 2 threads",
            "plain-ours": "our model + AdamW, no DeepSpeed, 1 proc x 2 threads"}
    out = ["| precision | config | runs | tokens/s (median of runs) | min-max over runs | best interval | step s | "
           "samples/step | data wait | vs plain-hf (median) | vs plain-hf (best) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for prec in precisions:
        ref = med([r["tokens_per_s"] for r in results[f"plain-hf/{prec}"]])
        ref_best = max(r["best_tokens_per_s"] for r in results[f"plain-hf/{prec}"])
        for impl in ("ours-2r-zero2", "ours-1r-zero0", "plain-hf", "plain-ours"):
            runs = results[f"{impl}/{prec}"]
            tps = [r["tokens_per_s"] for r in runs]
            m = med(tps)
            spb = 64 if impl == "ours-2r-zero2" else 32
            best = max(r["best_tokens_per_s"] for r in runs)
            out.append(f"| {prec} | {impl}: {desc[impl]} | {len(runs)} | {fmt(m)} | {fmt(min(tps))}-{fmt(max(tps))} | "
                       f"{fmt(best)} | {med([r['step_time'] for r in runs]):.3f} | {spb} | "
                       f"{100 * med([r['data_wait'] for r in runs]):.1f}% | {m / ref:.2f}x | {best / ref_best:.2f}x |")
    return out


# ------------------------------------------------------------------ part 2+3: ZeRO memory, checkpoints
def count_params(preset: str, vocab: int) -> int:
    from pretrain.model import build_model

    return sum(p.numel() for p in build_model(model_config(preset, vocab)).parameters())


def theory_bytes(stage: int, P: int, N: int, dtype: str) -> float:
    if dtype == "fp32":
        w, g, k = 4, 4, 8
    else:
        w, g, k = 2, 2, 12
    return {0: (w + g + k) * P, 1: (w + g + k / N) * P, 2: (w + (g + k) / N) * P, 3: (w + g + k) * P / N}[stage]


def zero_runs(args, data: str, root: str) -> dict:
    out = {}
    for dtype in args.mem_precisions:
        for stage in (0, 1, 2, 3):
            name = f"mem-z{stage}-{dtype}"
            par = "ddp" if stage == 0 else f"zero{stage}"
            r = launch(root, name, data, [
                f"model={args.mem_model}", f"parallel={par}", "cluster.nproc=2", f"precision={dtype}",
                f"data.micro_batch_size={args.mem_micro_batch}", f"trainer.max_steps={args.mem_steps}",
                "trainer.log_every=2", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=100"])
            res = {"peak_first_log_gb": r["rows"][0]["train/peak_mem_gb"],
                   "peak_last_log_gb": r["rows"][-1]["train/peak_mem_gb"], "saves_s": r["saves_s"],
                   "wall_s": r["wall_s"], "step_time": r["rows"][-1]["train/step_time"]}
            last = r["checkpoints"][-1] if r["checkpoints"] else None
            if last:
                files = [p for p in glob.glob(os.path.join(last, "**", "*"), recursive=True) if os.path.isfile(p)]
                res["ckpt_bytes"] = sum(os.path.getsize(p) for p in files)
                res["resave_s"], res["resave_bytes"] = resave(last, args.resave_reps)
            out[f"{stage}/{dtype}"] = res
            log(f"ZeRO-{stage} {dtype}: peak {res['peak_first_log_gb']:.3f} GB (first log) / "
                f"{res['peak_last_log_gb']:.3f} GB (end); saves {res['saves_s']} s; "
                f"torch.save {fmt(med(res.get('resave_s', [])), '.2f')} s; wall {r['wall_s']:.0f}s")
            shutil.rmtree(os.path.join(r["run_dir"], "checkpoints"), ignore_errors=True)
    return out


def resave(ckpt_dir: str, reps: int) -> tuple[list[float], int]:
    """torch.save of every .pt of a DeepSpeed checkpoint (loaded back), serially, timed."""
    import torch

    from parallel.checkpoint import weights_only_loads

    objs = {}
    with weights_only_loads():  # the trainer's own trust boundary (docs/training.md)
        for p in sorted(glob.glob(os.path.join(ckpt_dir, "*.pt"))):
            objs[os.path.basename(p)] = torch.load(p, weights_only=True, map_location="cpu")
    times, nbytes = [], 0
    for _ in range(reps):
        tmp = tempfile.mkdtemp(prefix="resave-", dir=os.path.dirname(ckpt_dir))
        t0 = time.perf_counter()
        for name, obj in objs.items():
            torch.save(obj, os.path.join(tmp, name))
        times.append(time.perf_counter() - t0)
        nbytes = sum(os.path.getsize(os.path.join(tmp, n)) for n in objs)
        shutil.rmtree(tmp)
    return times, nbytes


def memory_table(zero: dict, base: dict, P: int, N: int, dtypes: list[str]) -> list[str]:
    """Absolute (minus the RSS baseline) and relative to stage 0 (constant overheads cancel)."""
    b = base["baseline_gb"]
    out = [f"| precision | ZeRO stage | peak RSS rank 0, GB | minus baseline ({b:.3f} GB) | "
           "theory model states | measured / theory | saved vs stage 0: measured | saved vs stage 0: theory |",
           "|---|---|---|---|---|---|---|---|"]
    for dtype in dtypes:
        r0 = zero.get(f"0/{dtype}")
        for stage in (0, 1, 2, 3):
            r = zero.get(f"{stage}/{dtype}")
            if r is None:
                continue
            t = theory_bytes(stage, P, N, dtype) / 2**30
            d = r["peak_first_log_gb"] - b
            saved = "" if r0 is None or stage == 0 else f"{r0['peak_first_log_gb'] - r['peak_first_log_gb']:.3f}"
            saved_t = "" if stage == 0 else f"{(theory_bytes(0, P, N, dtype) - theory_bytes(stage, P, N, dtype)) / 2**30:.3f}"
            out.append(f"| {dtype} | {stage} | {r['peak_first_log_gb']:.3f} | {d:.3f} | {t:.3f} | {d / t:.2f} | "
                       f"{saved} | {saved_t} |")
    return out


def ckpt_table(zero: dict, dtypes: list[str]) -> list[str]:
    out = ["| precision | ZeRO stage | checkpoint MB | trainer save s (median, n) | torch.save same objects s "
           "(median, n) | trainer / torch.save |", "|---|---|---|---|---|---|"]
    for dtype in dtypes:
        for stage in (0, 1, 2, 3):
            r = zero.get(f"{stage}/{dtype}")
            if r is None or "resave_s" not in r:
                continue
            ts, rs = med(r["saves_s"]), med(r["resave_s"])
            out.append(f"| {dtype} | {stage} | {r['ckpt_bytes'] / 1e6:.0f} | {ts:.2f} ({len(r['saves_s'])}) | "
                       f"{rs:.2f} ({len(r['resave_s'])}) | {ts / rs:.2f}x |")
    return out


# ------------------------------------------------------------------ main
def tables(results: dict) -> list[str]:
    a = results["args"]
    lines = []
    if "throughput" in results:
        lines += ["", f"Throughput (bert-mini, seq 128, micro-batch {a['micro_batch']} per process; "
                      "tokens = non-padding):", ""]
        lines += throughput_table(results["throughput"], a["precisions"])
    if "memory" in results:
        P = results["mem_params"]
        lines += ["", f"ZeRO peak memory per rank, world size 2, {a['mem_model']} (P = {P / 1e6:.2f}M params), "
                      f"micro-batch {a['mem_micro_batch']}, GB = 2^30 bytes:", ""]
        lines += memory_table(results["memory"], results["baseline"], P, 2, a["mem_precisions"])
        lines += ["", f"Checkpoint save ({a['mem_model']}, world size 2):", ""]
        lines += ckpt_table(results["memory"], a["mem_precisions"])
    return lines


def render(path: str) -> None:
    with open(path) as f:
        results = json.load(f)
    print("\n".join(tables(results)))
    print(f"\ndate {results['date_utc']}, load avg start {results['loadavg_start'][0]:.1f}, "
          f"end {results['loadavg_end'][0]:.1f}, total {results['wall_s']:.0f}s")


def prepare_data(work: str) -> str:
    corpus, shards = os.path.join(work, "corpus"), os.path.join(work, "shards")
    subprocess.run([sys.executable, "-m", "pretrain.prepare.demo_corpus", corpus], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([str(BIN / "pretrain-prepare"), f"input={corpus}/*", f"output={shards}",
                    "tokenizer.vocab_size=8192"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return shards


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="bf16 only, 1 repeat, fewer steps, bert-small for memory")
    p.add_argument("--data", help="a prepared directory (default: demo corpus prepared into --workdir)")
    p.add_argument("--workdir", help="runs, logs and data go here (default: a new temp dir)")
    p.add_argument("--out", help="results JSON (default: <workdir>/results.json)")
    p.add_argument("--reps", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--skip", type=int, default=1, help="log intervals dropped as warm-up")
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--precisions", nargs="+")
    p.add_argument("--mem-model", help="model preset for the ZeRO memory/checkpoint runs")
    p.add_argument("--mem-precisions", nargs="+")
    p.add_argument("--mem-micro-batch", type=int, default=4)
    p.add_argument("--mem-steps", type=int)
    p.add_argument("--resave-reps", type=int, default=3)
    p.add_argument("--parts", nargs="+", default=["throughput", "memory"], choices=["throughput", "memory"])
    p.add_argument("--render", metavar="RESULTS_JSON", help="only print the tables of an earlier run")
    args = p.parse_args()
    if args.render:
        render(args.render)
        return
    q = args.quick
    defaults = dict(reps=1 if q else 2, steps=9 if q else 16, log_every=3 if q else 4,
                    precisions=["bf16"] if q else ["bf16", "fp32"], mem_model="bert-small" if q else "bert-medium",
                    mem_precisions=["bf16"] if q else ["bf16", "fp32"], mem_steps=4)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    t_start = time.perf_counter()
    work = args.workdir or tempfile.mkdtemp(prefix="bench-train-")
    os.makedirs(work, exist_ok=True)
    root = os.path.join(work, "runs")
    os.makedirs(root, exist_ok=True)
    if "OMP_NUM_THREADS" in os.environ:
        log(f"note: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} is set and changes every config")
    data = args.data or prepare_data(work)
    vocab = manifest_vocab(data)
    load = os.getloadavg()
    log(f"workdir {work}; data {data} (vocab {vocab}); {os.cpu_count()} cores; load avg {load[0]:.1f}")
    results = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cores": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                           "python": platform.python_version()},
               "args": vars(args), "data": data, "vocab_size": vocab, "loadavg_start": load}
    try:
        import torch
        import deepspeed
        import transformers

        results["versions"] = {"torch": torch.__version__, "deepspeed": deepspeed.__version__,
                               "transformers": transformers.__version__}
    except Exception:  # noqa: BLE001
        pass
    if "throughput" in args.parts:
        results["throughput"] = throughput(args, data, root)
    if "memory" in args.parts:
        P = count_params(args.mem_model, vocab)
        bases = [run_hidden("--baseline-worker", {"data": data, "model": args.mem_model,
                                                  "micro_batch": args.mem_micro_batch},
                            env={**os.environ, "DS_ACCELERATOR": "cpu"}) for _ in range(2)]
        base = {k: med([b[k] for b in bases]) for k in ("imports_gb", "baseline_gb", "with_fp32_model_gb")}
        base["runs"] = bases
        log(f"baseline RSS: {base}")
        zero = zero_runs(args, data, root)
        results.update({"memory": zero, "baseline": base, "mem_params": P})
    results["loadavg_end"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - t_start
    out = args.out or os.path.join(work, "results.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print("\n".join(tables(results)))
    print(f"\nload avg start {load[0]:.1f}, end {results['loadavg_end'][0]:.1f}; total {results['wall_s']:.0f}s; "
          f"results: {out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--plain-worker", "--baseline-worker"):
        fn = plain_worker if sys.argv[1] == "--plain-worker" else baseline_worker
        print("RESULT " + json.dumps(fn(json.loads(sys.argv[2]))), flush=True)
    else:
        main()
