"""wandb: offline by default with no network attempt, resumable by stored run id, mode policy.

The no-network check runs init+log+finish in a subprocess with no API key, no WANDB_MODE and an
empty HOME (no netrc), with a sitecustomize that records and refuses any non-loopback connection
or DNS lookup from Python; when strace works here, the whole process tree (wandb-core is a Go
binary Python patches cannot see) is traced too. Loopback/unix sockets (wandb's own service) are fine.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pretrain.tracking.wandb_mode import has_credentials, resolve_wandb_mode

REPO = Path(__file__).resolve().parents[2]

GUARD = textwrap.dedent('''
    import os, socket
    _LOG = os.environ["NET_GUARD_LOG"]
    _LOCAL = ("127.", "::1", "localhost", "0.0.0.0")

    def _local(host):
        return host is None or str(host).startswith(_LOCAL) or str(host) == ""

    def _refuse(what):
        with open(_LOG, "a") as f:
            f.write(what + "\\n")
        raise OSError("network disabled by test: " + what)

    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
    def connect(self, addr):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(addr[0]):
            _refuse("connect %r" % (addr,))
        return _connect(self, addr)
    def connect_ex(self, addr):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(addr[0]):
            _refuse("connect_ex %r" % (addr,))
        return _connect_ex(self, addr)
    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex

    _gai, _cc = socket.getaddrinfo, socket.create_connection
    def getaddrinfo(host, *a, **k):
        if not _local(host):
            _refuse("getaddrinfo %r" % (host,))
        return _gai(host, *a, **k)
    def create_connection(address, *a, **k):
        if not _local(address[0]):
            _refuse("create_connection %r" % (address,))
        return _cc(address, *a, **k)
    socket.getaddrinfo, socket.create_connection = getaddrinfo, create_connection
''')

SCRIPT = textwrap.dedent('''
    import json, sys
    from pretrain.tracking import build_tracker
    run_dir = sys.argv[1]
    cfg = {"backends": ["jsonl", "wandb"], "project": "test-offline", "tags": ["t"]}
    t = build_tracker(cfg, run_dir, "r1", {"model": {"hidden_size": 8}})
    for s in range(1, 4):
        t.log({"train/loss": 1.0 / s}, step=s)
    first = t.state()
    t.close()
    t = build_tracker(cfg, run_dir, "r1", {"model": {"hidden_size": 8}}, resume_state=first)
    t.log({"train/loss": 0.1, "train/grad_norm": float("nan")}, step=4)  # wandb gets nonfinite/train/grad_norm
    second = t.state()
    t.close()
    print("RESULT " + json.dumps({"first": first, "second": second, "mode": t.wandb_mode}))
''')


def clean_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in ("NETRC",)}
    env.update(HOME=str(home), WANDB_SILENT="true", **extra)
    return env


def strace_usable() -> bool:
    if not shutil.which("strace"):
        return False
    return subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect", "-o", os.devnull, "true"],
                          capture_output=True).returncode == 0


NONLOCAL = re.compile(r'(?:sin_addr=inet_addr\("(?!127\.)[^"]+"\)|inet_pton\(AF_INET6, "(?!::1")[^"]+")')


def test_offline_by_default_no_network_and_resume_same_id(tmp_path):
    home, guard_dir, run_dir = tmp_path / "home", tmp_path / "guard", tmp_path / "run"
    home.mkdir(), guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    guard_log, trace_log = tmp_path / "guard.log", tmp_path / "strace.log"
    env = clean_env(home, NET_GUARD_LOG=str(guard_log),
                    PYTHONPATH=os.pathsep.join([str(guard_dir), str(REPO)]))
    cmd = [sys.executable, "-c", SCRIPT, str(run_dir)]
    traced = strace_usable()
    if traced:
        cmd = ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg,sendmmsg", "-e", "signal=none",
               "-o", str(trace_log)] + cmd
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])

    assert not guard_log.exists(), f"python-level network attempts: {guard_log.read_text()}"
    if traced:
        hits = [l for l in trace_log.read_text().splitlines() if NONLOCAL.search(l)]
        assert not hits, "non-loopback network syscalls:\n" + "\n".join(hits[:10])

    run_id = result["first"]["wandb_run_id"]
    assert result["mode"] == "offline"
    assert re.fullmatch(r"[a-z0-9]{8}", run_id)
    assert result["second"] == {"wandb_run_id": run_id, "last_step": 4}
    # fresh + resumed, same id: offline-run-<YYYYmmdd_HHMMSS>-<id>, with "-1" appended by wandb
    # when both started within the same second
    offline_runs = sorted(d for d in (run_dir / "wandb").iterdir() if d.name.startswith("offline-run-"))
    assert len(offline_runs) == 2, offline_runs
    assert all(re.search(rf"-{run_id}(-\d+)?$", d.name) for d in offline_runs), offline_runs
    assert all((d / f"run-{run_id}.wandb").is_file() for d in offline_runs)
    assert [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["nonfinite"] == {"train/grad_norm": "nan"}


@pytest.fixture
def no_wandb_env(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("WANDB_") or key == "NETRC":
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_mode_policy(no_wandb_env, monkeypatch):
    assert not has_credentials()
    assert resolve_wandb_mode("auto")[0] == "offline"
    assert resolve_wandb_mode("disabled")[0] == "disabled"
    with pytest.raises(ValueError, match="no W&B API key") as e:
        resolve_wandb_mode("online")
    assert "\n" not in str(e.value)

    monkeypatch.setenv("WANDB_MODE", "disabled")            # user-set env wins over auto
    assert resolve_wandb_mode("auto") == ("disabled", "WANDB_MODE=disabled")
    assert resolve_wandb_mode("offline")[0] == "offline"    # explicit config wins over env
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode("auto")[0] == "offline"
    monkeypatch.delenv("WANDB_MODE")

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto")[0] == "online"
    assert resolve_wandb_mode("offline")[0] == "offline"


def test_netrc_and_settings_file_count_as_credentials(no_wandb_env, monkeypatch):
    from pretrain.tracking.wandb_mode import _base_url
    from urllib.parse import urlsplit

    netrc = no_wandb_env / ".netrc"
    netrc.write_text(f"machine {urlsplit(_base_url()).netloc}\n  login user\n  password {'k' * 40}\n")
    netrc.chmod(0o600)
    assert resolve_wandb_mode("auto")[0] == "online"
    netrc.write_text(f"machine example.invalid\n  login user\n  password {'k' * 40}\n")
    assert resolve_wandb_mode("auto")[0] == "offline"      # a key for another host does not count
    netrc.unlink()

    settings = no_wandb_env / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(f"[default]\napi_key = {'k' * 40}\n")
    assert resolve_wandb_mode("auto")[0] == "online"
