"""Pipeline-parallel benchmarks of the Engine (results: docs/benchmarks.md, "Pipeline").

    .venv/bin/python bench/pipeline.py            # memory (bert-base), speed and bubble (bert-mini)
    .venv/bin/python bench/pipeline.py --quick    # fewer steps and repeats

Every configuration is a torchrun launch of `build_engine` (the trainer's engine, not a mock) on
synthetic fixed-shape batches (seq 128, 15% masked, sentence labels), gloo, DS_ACCELERATOR=cpu,
one intra-op thread per process.
1. Memory per rank of parameters + optimizer state (fp32, torch AdamW, ZeRO-0), counted from the
   live tensors after 2 steps (module parameters, Adam moments), plus the share of the encoder's
   parameters the rank holds and its VmRSS: the plain engine on 1 process vs 2 and 4 stages,
   bert-base (vocab 30522), partition by parameters and by layer type.
2. Tokens/s at the same global batch: 2 stages x 1 replica vs 2 data-parallel ranks (ZeRO-1),
   bert-mini, micro-batch 8, M micro-batches per step; median of the timed steps, configs
   interleaved over repeats (shared machine).
3. Pipeline bubble: per stage, 1 - (time in forward/backward instructions) / (time of the
   pipelined part of the step, up to the gradient reductions), averaged over stages and steps,
   vs the theory (S-1)/(M+S-1) for equal stages and free communication. 2 stages (2 processes,
   one core each); 4 stages would need 4 cores.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
SEQ = 128


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ worker (under torchrun)
def batches(gen, n: int, micro: int, vocab: int) -> list[dict]:
    import torch

    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (micro, SEQ), generator=gen)
        chosen = torch.rand(micro, SEQ, generator=gen) < 0.15
        chosen[:, 1] = True
        out.append({"input_ids": torch.where(chosen, torch.full_like(ids, 4), ids),
                    "token_type_ids": (torch.arange(SEQ) >= SEQ // 2).long().expand(micro, SEQ).clone(),
                    "attention_mask": torch.ones_like(ids),
                    "labels": torch.where(chosen, ids, torch.full_like(ids, -100)),
                    "sentence_label": torch.randint(0, 2, (micro,), generator=gen)})
    return out


def vm_rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def model_state_bytes(engine) -> dict:
    """Unique parameter storage and Adam state of this rank (ZeRO-0 torch optimizer)."""
    import torch

    seen, params = set(), 0
    for p in engine.module.parameters():
        if p.data_ptr() not in seen and p.numel():
            seen.add(p.data_ptr())
            params += p.numel() * p.element_size()
    opt = getattr(engine.ds.optimizer, "optimizer", engine.ds.optimizer)
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                if isinstance(t, torch.Tensor) and t.dim() > 0)
    return {"params": params, "optimizer": state}


def encoder_params(module) -> int:
    from pretrain.model.encoder import EncoderLayer

    unique = {id(p): p.numel() for m in module.modules() if isinstance(m, EncoderLayer) for p in m.parameters()}
    return sum(unique.values())


def timed_instructions(engine, timings: dict) -> None:
    """Wrap DeepSpeed's pipeline instructions: seconds in forward/backward, and when the
    pipelined part of a step ends (the first gradient reduction)."""
    from deepspeed.runtime.pipe import schedule

    table = engine.ds._INSTRUCTION_MAP
    for cmd in (schedule.ForwardPass, schedule.BackwardPass, schedule.ReduceTiedGrads):
        inner = table[cmd]

        def wrapped(ds, _inner=inner, _cmd=cmd, **kw):
            t0 = time.perf_counter()
            if _cmd is schedule.ReduceTiedGrads:
                timings["pipe_end"] = t0
            _inner(ds, **kw)
            if _cmd is not schedule.ReduceTiedGrads:
                timings["busy"] += time.perf_counter() - t0
        table[cmd] = wrapped


def worker(spec: dict) -> dict:
    import torch
    from omegaconf import OmegaConf

    from parallel.config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig
    from parallel.engine import build_engine
    from parallel.topology import all_gather_object, barrier, detect
    from pretrain.data.config import ObjectiveConfig
    from pretrain.model import ModelConfig, build_model
    from pretrain.objectives import build_objective

    torch.set_num_threads(1)
    stages, micro, m_global = spec["stages"], spec["micro"], spec["m"]
    topo = detect(pipeline_stages=stages)
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{spec['model']}.yaml"))
    cfg.update(hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**cfg))
    gas = m_global // topo.dp_size
    encoder_total = encoder_params(model)  # before the engine releases other stages' layers
    engine = build_engine(model, build_objective(ObjectiveConfig(sentence_task=model.cfg.sentence_head), model.cfg), ParallelConfig(zero_stage=spec["zero"], pipeline_stages=stages,
                                                         pipeline_partition=spec.get("partition", "parameters")),
                          PrecisionConfig(dtype=spec.get("dtype", "fp32")), OptimConfig(lr=1e-4),
                          ScheduleConfig(name="constant"), total_steps=100, micro_batch_size=micro,
                          grad_accum=gas, topo=topo, seed=0)
    timings = {"busy": 0.0, "pipe_end": 0.0}
    if stages > 1:
        timed_instructions(engine, timings)
    gen = torch.Generator().manual_seed(1 + topo.dp_rank)
    steps = []
    for step in range(spec["warmup"] + spec["steps"]):
        mine = batches(gen, gas, micro, cfg["vocab_size"])
        barrier()
        timings.update(busy=0.0, pipe_end=0.0)
        t0 = time.perf_counter()
        engine.train_step(mine)
        t1 = time.perf_counter()
        if step >= spec["warmup"]:
            steps.append({"seconds": t1 - t0, "busy": timings["busy"],
                          "pipe": (timings["pipe_end"] or t1) - t0})
    mine = {"rank": topo.rank, "stage": topo.pp_rank, "steps": steps, "rss_gb": vm_rss_gb(),
            "encoder_share": encoder_params(engine.module) / encoder_total, **model_state_bytes(engine)}
    ranks = all_gather_object(mine)
    tokens = m_global * micro * SEQ
    seconds = statistics.median(max(r["steps"][i]["seconds"] for r in ranks) for i in range(spec["steps"]))
    bubbles = [1 - s["busy"] / s["pipe"] for r in ranks for s in r["steps"]] if stages > 1 else []
    return {"spec": spec, "ranks": ranks, "tokens_per_s": tokens / seconds, "step_s": seconds,
            "bubble": statistics.mean(bubbles) if bubbles else None,
            "bubble_theory": (stages - 1) / (gas + stages - 1) if stages > 1 else None}


# ------------------------------------------------------------------ orchestrator
def launch(spec: dict, work: str) -> dict:
    nproc = spec["nproc"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    out = os.path.join(work, f"r{time.time_ns()}.json")
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(29700 + os.getpid() % 200),
           str(Path(__file__).resolve()), "--worker", json.dumps(spec), out]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{spec} failed:\n{proc.stderr[-4000:]}")
    with open(out) as f:
        return json.load(f)


def gb(x: float) -> str:
    return f"{x / 2**30:.2f}"


def memory(args, work: str) -> list[dict]:
    base = dict(model=args.mem_model, micro=1, m=1, zero=0, warmup=1, steps=1)
    specs = [dict(base, nproc=1, stages=1, name="plain (1 process)")]
    for stages, partition in ((2, "parameters"), (2, "type:EncoderLayer"), (4, "parameters"),
                              (4, "type:EncoderLayer")):
        specs.append(dict(base, nproc=stages, stages=stages, partition=partition,
                          name=f"{stages} stages, {partition}"))
    out = []
    for spec in specs:
        log(f"memory: {spec['name']}")
        out.append(launch(spec, work))
    return out


def speed(args, work: str) -> dict:
    runs: dict = {}
    for rep in range(args.reps):
        for m in args.m:
            for name, stages in (("pipeline 2x1", 2), ("data parallel 2", 1)):
                spec = dict(model=args.speed_model, micro=8, m=m, zero=1, nproc=2, stages=stages,
                            warmup=1, steps=args.steps, name=name)
                log(f"speed rep {rep}: {name}, M={m}")
                runs.setdefault((name, m), []).append(launch(spec, work))
    return {f"{k[0]}|{k[1]}": v for k, v in runs.items()}


def tables(res: dict) -> list[str]:
    lines = []
    if "memory" in res:
        lines += memory_table(res)
    if "speed" in res:
        lines += speed_table(res)
    return lines


def memory_table(res: dict) -> list[str]:
    lines = ["", f"Memory per rank, {res['args']['mem_model']} fp32, ZeRO-0 torch AdamW (model states counted "
                 "from live tensors; GB = 2^30 bytes):", "",
             "| layout | rank (stage) | params GB | Adam state GB | params + state GB | encoder share | VmRSS GB |",
             "|---|---|---|---|---|---|---|"]
    for run in res["memory"]:
        for r in sorted(run["ranks"], key=lambda r: r["rank"]):
            lines.append(f"| {run['spec']['name']} | {r['rank']} ({r['stage']}) | {gb(r['params'])} | "
                         f"{gb(r['optimizer'])} | {gb(r['params'] + r['optimizer'])} | "
                         f"{r['encoder_share']:.2f} | {r['rss_gb']:.2f} |")
    return lines


def speed_table(res: dict) -> list[str]:
    lines = ["", f"Speed and bubble, {res['args']['speed_model']} fp32 ZeRO-1, 2 processes x 1 thread, micro-batch 8 "
                  f"x seq {SEQ}, global batch M x 8 sequences (median step over {res['args']['steps']} steps, "
                  f"{res['args']['reps']} interleaved repeats):", "",
              "| M | data parallel 2 tokens/s | pipeline 2x1 tokens/s | pipeline / DP | bubble measured | "
              "bubble theory (S-1)/(M+S-1) |", "|---|---|---|---|---|---|"]
    for m in res["args"]["m"]:
        dp = res["speed"][f"data parallel 2|{m}"]
        pp = res["speed"][f"pipeline 2x1|{m}"]
        dp_t = statistics.median(r["tokens_per_s"] for r in dp)
        pp_t = statistics.median(r["tokens_per_s"] for r in pp)
        bubble = statistics.median(r["bubble"] for r in pp)
        lines.append(f"| {m} | {dp_t:,.0f} | {pp_t:,.0f} | {pp_t / dp_t:.2f}x | {bubble:.2f} | "
                     f"{pp[0]['bubble_theory']:.2f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir")
    p.add_argument("--mem-model", default="bert-base")
    p.add_argument("--speed-model", default="bert-mini")
    p.add_argument("--m", type=int, nargs="+", default=[2, 4, 8], help="micro-batches per step (>= 2: DP has 2 ranks)")
    p.add_argument("--reps", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--parts", nargs="+", default=["memory", "speed"], choices=["memory", "speed"])
    p.add_argument("--render", metavar="RESULTS_JSON")
    args = p.parse_args()
    if args.render:
        with open(args.render) as f:
            print("\n".join(tables(json.load(f))))
        return
    args.reps = args.reps or (1 if args.quick else 2)
    args.steps = args.steps or (3 if args.quick else 5)
    work = args.workdir or tempfile.mkdtemp(prefix="bench-pipeline-")
    os.makedirs(work, exist_ok=True)
    from parallel.device import cpu_features

    res = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "cores": os.cpu_count(), "cpu_features": [k for k, v in cpu_features().items() if v],
           "loadavg_start": os.getloadavg(), "args": vars(args)}
    t0 = time.perf_counter()
    if "memory" in args.parts:
        res["memory"] = memory(args, work)
    if "speed" in args.parts:
        res["speed"] = speed(args, work)
    res["loadavg_end"], res["wall_s"] = os.getloadavg(), time.perf_counter() - t0
    path = os.path.join(work, "results.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1, default=str)
    print("\n".join(tables(res)))
    print(f"\ncpu features {res['cpu_features']}; load avg {res['loadavg_start'][0]:.1f} -> "
          f"{res['loadavg_end'][0]:.1f}; {res['wall_s']:.0f}s; results: {path}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        result = worker(json.loads(sys.argv[2]))
        if int(os.environ.get("RANK", "0")) == 0:
            with open(sys.argv[3], "w") as f:
                json.dump(result, f)
    else:
        main()
