"""The `pretrain-prepare` Hydra app: one-line errors with exit code 2, no litter, a working run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "launch.prepare", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    (d / "a.txt").write_text("One sentence here. Another one there.\n\nA second document. It is short.\n")
    return d


@pytest.mark.parametrize("args, message", [
    (["output=x", "nosuchkey=1"], "nosuchkey"),
    (["output=x", "tokenizer.nosuch=1"], "nosuch"),
    (["input=a.txt", "output=x", "validation_fraction=2"], "'validation_fraction': 2.0 is not in [0, 1)"),
    (["input=a.txt", "output=x", "num_workers=many"], "'num_workers': expected an integer, got 'many'"),
    (["input=a.txt", "output=x", "format.type=csv"], "'format.type': 'csv' is not one of"),
    (["input=a.txt"], "'output': no output directory"),
    (["input=nothing/*.txt", "output=x"], "nothing/*.txt: glob matches no files"),
    (["input=[a.txt,missing.jsonl]", "output=x"], "missing.jsonl: no such file"),
    (["input=a.txt", "output=x", "tokenizer.path=nope.json"], "tokenizer.path=nope.json: no such file"),
    (["input=a.txt", "output=x", "on_bad_record=error", "tokenizer.path=bad.json"], "not a tokenizers JSON file"),
])
def test_user_errors_are_one_line_exit_2(args, message, tiny, monkeypatch, capsys):
    """In-process through the same main() the console script calls (subprocesses are slow)."""
    from launch.prepare import main

    (tiny / "bad.json").write_text("{}")
    monkeypatch.chdir(tiny)
    monkeypatch.setattr(sys, "argv", ["pretrain-prepare", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pretrain-prepare: error: ") and message in lines[0]
    assert "Traceback" not in err


def test_subprocess_error_has_no_traceback(tiny):
    r = _cli(["input=a.txt", "output=x", "nosuchkey=1"], tiny)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nosuchkey" in r.stderr, r.stderr


def test_cli_run_leaves_no_hydra_litter_and_refuses_other_config(tiny, prepared_demo):
    tok = os.path.join(prepared_demo, "tokenizer.json")
    before = set(os.listdir(tiny))
    r = _cli(["input=a.txt", "output=out", f"tokenizer.path={tok}", "progress=false", "num_workers=1",
              "validation_fraction=0"], tiny)
    assert r.returncode == 0, r.stderr
    assert "records 2 = documents 2 + skipped 0 (none)\n" in r.stderr
    assert "split documents 0 (over max_document_chars=1,000,000)\n" in r.stderr
    assert set(os.listdir(tiny)) - before == {"out"}
    assert sorted(os.listdir(tiny / "out")) == ["manifest.json", "tokenizer.json", "train", "valid"]
    manifest = json.loads((tiny / "out" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] == 2
    r = _cli(["input=a.txt", "output=out", f"tokenizer.path={tok}", "seed=7", "progress=false"], tiny)
    assert r.returncode == 2 and "different config" in r.stderr and "overwrite=true" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
