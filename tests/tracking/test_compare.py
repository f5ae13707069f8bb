"""pretrain-compare: PNG + final-metrics table from runs written by the real tracker; 1-line errors."""

import matplotlib.image as mpimg

from launch.compare import main
from pretrain.tracking import build_tracker


def make_run(path, scale, steps=300, eval_every=50):
    t = build_tracker({"backends": ["jsonl"]}, path, path.name, None)
    for s in range(1, steps + 1):
        t.log({"train/loss": scale * 10 / s, "train/mlm_acc": 1 - 1 / s, "train/lr": 1e-4, "train/custom": 1.0}, s)
        if s % eval_every == 0:
            t.log({"eval/loss": scale * 5 / s, "eval/mlm_acc": min(0.9, s / 200 / scale)}, s)
    t.close()
    return path


def test_compare_png_and_table(tmp_path, capsys):
    a, b = make_run(tmp_path / "runA", 1.0), make_run(tmp_path / "runB", 2.0)
    out = tmp_path / "cmp.png"
    assert main([str(a), str(b), "--out", str(out), "--smooth", "5", "--max-points", "50"]) == 0
    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.shape[2] in (3, 4)
    text = capsys.readouterr().out
    assert "runA" in text and "runB" in text
    row = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert row["train/loss"] == ["0.0333", "0.0667"]          # last values, unsmoothed
    assert row["train/custom"] == ["1.0000", "1.0000"]        # unknown keys are handled too
    best = next(line for line in text.splitlines() if line.startswith("best eval/mlm_acc"))
    assert "0.9000 @200" in best and "0.7500 @300" in best


def test_compare_metrics_option(tmp_path, capsys):
    a = make_run(tmp_path / "a", 1.0, steps=60)
    assert main([str(a), "--out", str(tmp_path / "x.png"), "--metrics", "train/lr,nope"]) == 0
    captured = capsys.readouterr()
    assert "nope" in captured.err and "1 plots: train/lr" in captured.out
    assert main([str(a), "--out", str(tmp_path / "y.png"), "--metrics", "nope"]) == 2


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_inputs(tmp_path, capsys):
    good = make_run(tmp_path / "good", 1.0, steps=60)
    out = str(tmp_path / "o.png")
    assert main([str(good), str(tmp_path / "missing"), "--out", out]) == 2
    assert "missing: no such run directory" in one_line_error(capsys)

    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", out]) == 2
    assert "empty/metrics.jsonl: no metrics file" in one_line_error(capsys)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": 1, "train/loss": 1}\n{"step": 2, "train/loss": \n{"step": 3}\n')
    assert main([str(bad), "--out", out]) == 2
    assert "bad/metrics.jsonl:2: malformed line" in one_line_error(capsys)

    (bad / "metrics.jsonl").write_text('{"train/loss": 1}\n')
    assert main([str(bad), "--out", out]) == 2
    assert "metrics.jsonl:1: malformed line (missing integer 'step')" in one_line_error(capsys)


def test_torn_last_line_is_skipped_with_warning(tmp_path, capsys):
    run = make_run(tmp_path / "crashed", 1.0, steps=60)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 61, "train/lo')
    assert main([str(run), "--out", str(tmp_path / "c.png")]) == 0
    captured = capsys.readouterr()
    assert "unterminated last line" in captured.err
    assert any(line.startswith("last step") and line.split()[-1] == "60" for line in captured.out.splitlines())


def test_null_values_from_a_diverged_run_are_read_counted_and_not_plotted(tmp_path, capsys):
    from pretrain.tracking.reader import read_run

    run = tmp_path / "diverged"
    t = build_tracker({"backends": ["jsonl"]}, run, run.name, None)
    for s in range(1, 11):
        t.log({"train/loss": 10.0 / s if s < 8 else float("nan"), "train/lr": 1e-4}, s)
    t.close()
    with open(run / "metrics.jsonl", "a") as f:  # what older runs wrote: bare NaN
        f.write('{"step": 11, "train/loss": NaN}\n')
    curves = read_run(run)
    assert [s for s, _ in curves.curves["train/loss"]] == list(range(1, 8))
    assert curves.nonfinite == {"train/loss": 4} and curves.last_step == 11
    assert main([str(run), "--out", str(tmp_path / "d.png")]) == 0
    captured = capsys.readouterr()
    assert "non-finite values, left out of the plots: train/loss x4" in captured.err
    row = {line.split()[0]: line.split()[1:] for line in captured.out.splitlines() if line.strip()}
    assert row["train/loss"] == ["nan"]


def test_an_objectives_declared_metrics_are_plotted_and_its_primary_metric_is_the_best_row(tmp_path, capsys):
    """A run whose objective.json declares metrics nobody else knows (e.g. ELECTRA's disc_acc):
    pretrain-compare plots them by default and reports the best of the objective's primary metric;
    pretrain-status shows its `shown` ones."""
    import json

    from launch.compare import choose_metrics
    from launch.status import shown_metrics
    from pretrain.tracking.reader import read_run

    path = tmp_path / "electra"
    t = build_tracker({"backends": ["jsonl"]}, path, "electra", None)
    for s in range(1, 41):
        t.log({"train/loss": 10 / s, "train/disc_acc": 1 - 1 / s, "train/replaced_fraction": 0.15, "train/lr": 1e-4}, s)
        if s % 10 == 0:
            t.log({"eval/loss": 5 / s, "eval/disc_acc": s / 50}, s)
    t.close()
    (path / "objective.json").write_text(json.dumps({"name": "electra", "metrics": ["disc_acc", "replaced_fraction"],
                                                     "shown": ["disc_acc"], "primary": "eval/disc_acc"}))
    run = read_run(path)
    assert choose_metrics([run], None) == ["train/loss", "eval/loss", "train/disc_acc", "train/replaced_fraction",
                                           "eval/disc_acc"]
    assert shown_metrics(run) == ["train/loss", "train/disc_acc", "train/lr", "train/tokens_per_s", "eval/loss",
                                  "eval/disc_acc"]
    assert main([str(path), "--out", str(tmp_path / "e.png")]) == 0
    best = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("best "))
    assert best.startswith("best eval/disc_acc") and "0.8000 @40" in best
