"""A non-editable install (the wheel) carries every package and the Hydra tree and runs."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_contains_packages_and_configs_and_launches(tmp_path, prepared_demo):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", REPO,
                    "-w", str(tmp_path / "wheel")], check=True, timeout=300, capture_output=True)
    (wheel,) = glob.glob(str(tmp_path / "wheel" / "*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(site)
    for needed in ("conf/train.yaml", "conf/prepare.yaml", "conf/model/bert-base.yaml", "conf/parallel/zero3.yaml",
                   "launch/worker.py", "pretrain/model/pretraining.py", "parallel/engine.py",
                   "slurm/pretrain.sbatch", "conf/cluster/slurm.yaml"):
        assert needed in names, needed
    env = dict(os.environ, PYTHONPATH=str(site))
    code = ("import launch, sys; assert launch.__file__.startswith(sys.argv[1]), launch.__file__; "
            "sys.argv = ['pretrain-launch', 'run.name=w', 'run.dry_run=true', 'data.path=' + sys.argv[2]]; "
            "from launch.train import main; main()")
    result = subprocess.run([sys.executable, "-c", code, str(site), prepared_demo], cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "torch.distributed.run" in result.stdout
