"""Checks that need a CUDA GPU (marker `cuda`; skipped with the reason elsewhere). bench/gpu_check.sh
runs them with `-m cuda`. Each launch checks several things: GPU time is short."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.cuda
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(scenario: str, tmp_path: Path, timeout: int = 300, worker: Path = HERE / "_cuda_worker.py") -> dict:
    """Run `worker SCENARIO OUT` under torchrun at world 1 on the GPU; its JSON result (the
    engine-scenario worker of tests/parallel takes a directory and writes SCENARIO.json there)."""
    parallel_worker = worker.name == "_worker.py"
    out = tmp_path / f"{scenario}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.pop("DS_ACCELERATOR", None)  # DeepSpeed must find CUDA by itself
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
           "--master_port", str(_port()), str(worker), scenario, str(tmp_path if parallel_worker else out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(out.read_text())


def test_collectives_at_world_one_on_a_pure_nccl_group(tmp_path):
    r = _torchrun("collectives", tmp_path)
    assert r["backend"] == "nccl" and r["device"].startswith("cuda")
    assert r["raw_rejects_host"], "this NCCL group accepted a host tensor: the check below proves nothing"
    assert r["summed"] == [1.0, 2.0, 3.0] and r["on_device"] == [0.0, 1.0, 2.0]
    assert r["gathered"] == [{"rank": 0}]


def test_bf16_zero2_engine_steps_on_the_gpu_with_adamw_and_lamb(tmp_path):
    r = _torchrun("engine_bf16", tmp_path)
    for optim in ("adamw", "lamb"):
        losses = r[optim]["losses"]
        assert all(l == l and l < 1e4 for l in losses), losses  # finite
        assert losses[-1] < losses[0], (optim, losses)  # the same batch again: it must fit it
        assert r[optim]["param_device"].startswith("cuda") and r[optim]["param_dtype"] == "torch.bfloat16"
    assert r["max_memory_gb"] > 0


def test_lamb_trust_ratios_are_per_tensor_under_zero_on_the_gpu(tmp_path):
    """LAMB under ZeRO 1-3 on the GPU (flat partitions, fragment mapping) equals ZeRO-0's per-tensor
    LAMB after one step, and over 20 steps (the CPU test's scenario, at world 1 on CUDA)."""
    r = _torchrun("lamb", tmp_path, worker=ROOT / "tests" / "parallel" / "_worker.py")
    for stage in (1, 2, 3):
        assert r[f"zero{stage}_one_step_rel"] < 1e-5, (stage, r)
        assert r[f"zero{stage}"] == pytest.approx(r["zero0"], rel=1e-3), stage
    assert r["zero0"][-1] < r["zero0"][0]


def test_lamb_on_the_gpu_never_syncs_with_the_host_and_matches_the_reference():
    sys.path.insert(0, str(ROOT / "tests" / "parallel"))
    from test_optim import ReferenceLamb

    from parallel.optim import Lamb

    torch.manual_seed(0)
    init = [torch.randn(64, 32, device="cuda"), torch.randn(32, device="cuda"), torch.zeros(8, 8, device="cuda")]
    ours = [torch.nn.Parameter(w.clone()) for w in init]
    ref = [torch.nn.Parameter(w.clone()) for w in init]
    opt = Lamb([{"params": ours, "weight_decay": 0.01, "adapt": True}], lr=1e-3)
    opt_ref = ReferenceLamb([{"params": ref, "weight_decay": 0.01, "adapt": True}], lr=1e-3)
    for _ in range(5):
        for a, b in zip(ours, ref):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any device -> host sync inside step() raises
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        opt_ref.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_precision_auto_and_the_mfu_peak_on_this_gpu():
    from parallel.precision import resolve_precision
    from pretrain.train.throughput import peak_flops_per_device

    gpu = torch.device("cuda", 0)
    major, _ = torch.cuda.get_device_capability(gpu)
    choice = resolve_precision("auto", gpu)
    assert choice.dtype == ("bf16" if major >= 8 else "fp16") and "cuda:" in choice.reason
    peak = peak_flops_per_device(choice.dtype, None, gpu)
    assert peak.flops > 1e12 and choice.dtype in peak.line()
    fp32 = peak_flops_per_device("fp32", None, gpu)
    assert "measured" in fp32.source and fp32.flops < peak.flops


def test_one_rank_nccl_pretrain_launch_trains_exports_and_records_the_gpu(tmp_path, prepared_demo):
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    cmd = [sys.executable, "-m", "launch.train", "run.name=g", f"run.root={tmp_path}/runs", f"data.path={prepared_demo}",
           "model=bert-tiny", "parallel=zero2", "cluster.nproc=1", "trainer.max_steps=6", "trainer.log_every=2",
           "trainer.eval_every=6", "trainer.eval_batches=2", "trainer.progress=false", "tracker=none",
           "data.micro_batch_size=8", "data.max_seq_len=64", "optim=lamb"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "runs" / "g"
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())["precision"]
    assert stored["resolved_from"] == "auto" and stored["dtype"] in ("bf16", "fp16") and "cuda:" in stored["reason"]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if "train/loss" in m]
    assert len(train) == 3 and all(m["train/peak_mem_gb"] > 0 and m["train/mfu"] > 0 for m in train)
    assert any("eval/mlm_acc" in m for m in metrics)
    assert (run_dir / "export" / "model.safetensors").is_file()
    assert "MFU against" in result.stdout


@pytest.mark.parametrize("arch, head, zero", [("bert", "sop", 0), ("modernbert", "none", 2)])
def test_training_steps_sync_with_the_host_only_in_the_one_reduction(tmp_path, arch, head, zero):
    """Real bf16 train_steps under torch.cuda.set_sync_debug_mode: no synchronizing CUDA call made
    by our code outside the engine's one reduction (DeepSpeed's own are listed for the record)."""
    out = tmp_path / "syncs.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                        "DS_ACCELERATOR")}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "train" / "_host_reads_worker.py"), arch, head,
                           str(zero), str(out), "cuda"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    r = json.loads(out.read_text())
    print(f"{arch} ZeRO-{zero}: syncs outside our code: {r['cuda_syncs_others']}")
    assert r["device"].startswith("cuda")
    assert r["seen"] == [] and r["cuda_syncs_ours"] == [], (r["seen"], r["cuda_syncs_ours"])
    assert r["carried"] == [1.0, 2.0] and r["loss"] > 0


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_varlen_attention_trains_on_the_gpu_like_the_masked_path(arch):
    """attention_backend=varlen on CUDA (nested-tensor SDPA; FlexAttention compiled for ModernBERT's
    local windows): bf16 logits and gradients match the masked SDPA path, with no host sync."""
    sys.path.insert(0, str(ROOT / "tests" / "model"))
    from helpers_model import example_ids, modern_cfg, packed_batch, tiny_cfg

    from pretrain.model import build_model
    from pretrain.model.layout import LAYOUT_KEYS, batch_layout

    def cfg(backend):   # head_dim 16: FlexAttention's smallest on CUDA
        shape = dict(hidden_size=64, intermediate_size=96, sentence_head="none", unpad=True, attention_backend=backend)
        if arch == "modernbert":
            return modern_cfg(local_attention=8, **shape)
        return tiny_cfg(arch, hidden_dropout=0.0, attention_dropout=0.0, **shape)

    torch.manual_seed(0)
    models = [build_model(cfg(b)).cuda().to(torch.bfloat16).train() for b in ("sdpa", "varlen")]
    models[1].load_state_dict(models[0].state_dict())
    c = models[0].cfg
    exs = example_ids(c, [5, 30, 3, 9, 6, 40, 64, 17])
    batch = packed_batch(c, [exs[:3], exs[3:6], exs[6:7], exs[7:]], 64)
    batch.update(batch_layout(batch["attention_mask"], batch["position_ids"], batch["labels"]))
    keys = ("input_ids", "token_type_ids", "attention_mask", "labels", "position_ids") + LAYOUT_KEYS
    inputs = {k: (batch[k].cuda() if isinstance(batch[k], torch.Tensor) else batch[k]) for k in keys}
    results = []
    for i, model in enumerate(models):
        out = model(**inputs)                      # warm-up (FlexAttention compiles), then measured
        model.zero_grad()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if i == 1 else "default")
        try:
            out = model(**inputs)
            out.mlm_logits.float().logsumexp(-1).mean().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        results.append((out.mlm_logits.float(), {n: p.grad.float() for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=5e-2, atol=5e-2, msg=name)
