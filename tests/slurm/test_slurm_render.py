"""The job script cluster=slurm renders (golden files) and the one-line errors of bad cluster configs.

No SLURM needed: these run in-process everywhere. Regenerate the golden files after an intended
change of the template or the renderer with

    PRETRAIN_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/slurm/test_slurm_render.py

and review the diff (git diff tests/slurm/golden/).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module

from launch.launcher import LAUNCHERS, launcher_for
from launch.slurm import SlurmLauncher, render
from pretrain.train.config import CLUSTER_KINDS, ConfigError, validate

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
RUN_DIR, CWD, PYTHON = "/shared/runs/big", "/shared/work", "/shared/venv/bin/python"

CPU = ["cluster=slurm", "cluster.nnodes=2", "cluster.nproc=2", "cluster.time=01:00:00", "cluster.cpus_per_task=8",
       "cluster.mem=32G", "cluster.partition=cpu"]
GPU = ["cluster=slurm", "cluster.nnodes=4", "cluster.nproc=8", "cluster.gpus_per_node=8", "cluster.cpus_per_task=64",
       "cluster.mem=0", "cluster.time=1-00:00:00", "cluster.partition=gpu", "cluster.account=proj42", "cluster.qos=high",
       "cluster.constraint=a100", "cluster.exclusive=true", "cluster.exclude='gpu[013]'", "cluster.signal=USR2",
       "cluster.signal_grace=300", "cluster.max_requeues=5", "cluster.rendezvous=c10d",
       "cluster.setup=['module load cuda/12.4','source /shared/venv/bin/activate']",
       "+cluster.env.NCCL_DEBUG=WARN", "+cluster.env.NCCL_SOCKET_IFNAME=ib0", "+cluster.env.NCCL_IB_HCA='mlx5_0,mlx5_1'",
       "cluster.extra_sbatch=['--reservation=pretrain','--mail-type=END']", "cluster.srun_args=['--cpu-bind=none']",
       "cluster.container.image='nvcr.io#nvidia/pytorch:24.05-py3'",
       "cluster.container.mounts=['/shared:/shared']", "cluster.container.workdir=/shared/work",
       "cluster.python=python", "model=bert-large", "parallel=zero2", "precision=bf16"]


def _cfg(*overrides):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["run.name=big", "data.path=/shared/data", *overrides])
    cfg = dict(cfg)
    cfg.pop("hydra", None)
    return validate(cfg)


@pytest.mark.parametrize("name, overrides, python", [("cpu", CPU, PYTHON), ("gpu", GPU, None)])
def test_rendered_job_script_matches_golden(name, overrides, python):
    text = render(_cfg(*overrides), RUN_DIR, cwd=CWD, python=python)
    path = os.path.join(GOLDEN, f"{name}.sbatch")
    if os.environ.get("PRETRAIN_UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read(), f"{path} differs; see this file's docstring to regenerate it"
    assert "{{" not in text
    result = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr  # valid bash


def test_gpu_script_asks_for_gpus_container_signal_and_nccl_env():
    text = render(_cfg(*GPU), RUN_DIR, cwd=CWD)
    for needle in ("#SBATCH --gpus-per-node=8", "#SBATCH --signal=B:USR2@300", "#SBATCH --requeue",
                   "#SBATCH --open-mode=append", f"#SBATCH --output={RUN_DIR}/logs/slurm-%j.out",
                   "#SBATCH --reservation=pretrain", "export NCCL_IB_HCA=mlx5_0,mlx5_1", "module load cuda/12.4",
                   "--container-image=nvcr.io#nvidia/pytorch:24.05-py3", "--container-mounts=/shared:/shared",
                   "--cpu-bind=none", "MAX_REQUEUES=5", "SIG=USR2", "--container-name=pretrain-", " python -m launch.slurm_node"):
        assert needle in text, needle
    cpu = render(_cfg(*CPU), RUN_DIR, cwd=CWD, python=PYTHON)
    assert "gpus-per-node" not in cpu and "--container" not in cpu


def test_every_cluster_kind_has_a_launcher():
    assert set(LAUNCHERS) == set(CLUSTER_KINDS)
    for kind in CLUSTER_KINDS:
        launcher = launcher_for(kind)
        assert all(callable(getattr(launcher, m)) for m in ("check", "describe", "launch"))


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["cluster.nnodes=3", "cluster.nproc=1", "parallel.pipeline_stages=2"], "parallel.pipeline_stages"),
        (["cluster.partition=''"], "cluster.partition"),
        (["cluster.time=10:aa"], "cluster.time"),
        (["cluster.time=2"], "cluster.signal_grace"),  # 120 s limit, signal 180 s before it
        (["cluster.signal=HUP"], "cluster.signal"),
        (["cluster.rendezvous=etcd"], "cluster.rendezvous"),
        (["cluster.nproc=4", "cluster.gpus_per_node=8"], "cluster.gpus_per_node"),
        (["cluster.mem=lots"], "cluster.mem"),
        (["cluster.max_requeues=-1"], "cluster.max_requeues"),
        (["cluster.chain=0"], "cluster.chain"),
    ],
)
def test_bad_cluster_config_is_one_line_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        SlurmLauncher().check(_cfg("cluster=slurm", *overrides), submit=False)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["cluster.extra_sbatch=['--nodes=4']"], "cluster.nnodes"),
        (["cluster.extra_sbatch=['#SBATCH --time=10']"], "cluster.time"),
        (["cluster.extra_sbatch=['-p gpu']"], "cluster.partition"),
        (["cluster.extra_sbatch=[reservation]"], "cluster.extra_sbatch[0]"),
        (["cluster.partition='gpu a100'"], "cluster.partition"),
        (["cluster.container.image=img"], "cluster.container.mounts"),
    ],
)
def test_launcher_refuses_what_it_owns_or_cannot_render(overrides, needle):
    with pytest.raises(ConfigError) as err:
        SlurmLauncher().check(_cfg("cluster=slurm", *overrides), submit=False)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_local_launcher_refuses_several_nodes():
    with pytest.raises(ConfigError, match="cluster.nnodes"):
        launcher_for("local").check(_cfg("cluster.nnodes=2"), submit=True)


def _launch(tmp_path, *args, path=None):
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "launch.train", f"run.root={tmp_path}/runs", "run.name=s",
                           "cluster=slurm", *args], capture_output=True, text=True, timeout=120, env=env,
                          cwd=str(tmp_path))


def test_missing_sbatch_is_one_line_error_and_dry_run_renders_anyway(tmp_path, prepared_demo):
    no_slurm = os.path.dirname(sys.executable) + ":/usr/bin/env-does-not-matter"
    result = _launch(tmp_path, f"data.path={prepared_demo}", path=no_slurm)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "sbatch is not on PATH" in lines[0], result.stderr
    assert "cluster.kind" in lines[0]
    assert not os.path.exists(tmp_path / "runs" / "s")

    dry = _launch(tmp_path, f"data.path={prepared_demo}", "run.dry_run=true", "cluster.nnodes=2", "cluster.chain=2",
                  path=no_slurm)
    assert dry.returncode == 0, dry.stderr
    assert "#SBATCH --nodes=2" in dry.stdout and "-m launch.slurm_node" in dry.stdout
    assert f"would run: sbatch --parsable {tmp_path}/runs/s/slurm/job.sbatch" in dry.stdout
    assert "--dependency=afterany:<job 1>" in dry.stdout
    assert not os.path.exists(tmp_path / "runs" / "s")
