"""`pretrain-compare runs/a runs/b --out cmp.png`: overlay the curves of several runs and print a
table of their final metrics. Reads only each run's metrics.jsonl (streamed, downsampled), so it
works on runs that are still training, crashed, or were copied off a cluster without dashboards.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pretrain.tracking.reader import PLOT_TRAINER, TRAINER_METRICS, MetricsError, RunCurves, objective_metrics, read_run


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pretrain-compare", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (each holding metrics.jsonl)")
    p.add_argument("--out", default="compare.png", help="PNG to write (default: compare.png)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated metrics to plot (default: train/eval loss and accuracy "
                        "curves that exist); 'all' plots every logged metric")
    p.add_argument("--smooth", type=int, default=1, help="trailing moving-average window for plotted train curves (default 1 = raw)")
    p.add_argument("--max-points", type=int, default=2000, help="points kept per curve (downsampling, default 2000)")
    return p.parse_args(argv)


def _order(keys, runs: list[RunCurves] = ()) -> list[str]:
    """The trainer's metrics, then the runs' objective metrics, in their canonical order, then
    anything else alphabetically."""
    keys = set(keys)
    first = list(dict.fromkeys([*TRAINER_METRICS, *(m for r in runs for m in objective_metrics(r))]))
    return [k for k in first if k in keys] + sorted(keys - set(first))


def default_metrics(runs: list[RunCurves]) -> list[str]:
    """The loss curves, every metric the runs' objectives declare (objective.json), and
    fine-tuning's task metrics: whatever of them the runs logged."""
    present = set().union(*(r.curves for r in runs))
    wanted = [*PLOT_TRAINER[:2], *(m for r in runs for m in objective_metrics(r)), *PLOT_TRAINER[2:]]
    return [m for m in dict.fromkeys(wanted) if m in present]


def choose_metrics(runs: list[RunCurves], spec: str | None) -> list[str]:
    present = set().union(*(r.curves for r in runs))
    if spec is None:
        return default_metrics(runs)
    if spec.strip() == "all":
        return _order(present, runs)
    wanted = [m.strip() for m in spec.split(",") if m.strip()]
    missing = [m for m in wanted if m not in present]
    if missing:
        print(f"warning: not logged by any run: {', '.join(missing)}", file=sys.stderr)
    return [m for m in wanted if m in present]


def plot(runs: list[RunCurves], metrics: list[str], out: Path, smooth: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for i, run in enumerate(runs):
            pts = run.curves.get(metric)
            if pts:
                xs, ys = zip(*pts)
                marker = "o" if metric.startswith("eval/") and len(pts) < 50 else None
                ax.plot(xs, ys, label=run.name, color=f"C{i % 10}", marker=marker, markersize=3, linewidth=1.2)
        ax.set_title(metric + (f" (smoothed {smooth})" if smooth > 1 and not metric.startswith("eval/") else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if metric.endswith("loss") and all(y > 0 for r in runs for _, y in r.curves.get(metric, [])):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(runs), 4), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _fmt(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}"


# Rows from a fine-tuning run's summary.json: (label, key, format).
FINETUNE_ROWS = (("method", "method", str), ("trainable params", "trainable_params", lambda v: f"{int(v):,}"),
                 ("trainable %", "trainable_fraction", lambda v: f"{100 * float(v):.3f}"),
                 ("task weights (bytes)", "task_bytes", lambda v: f"{int(v):,}"))


def table(runs: list[RunCurves]) -> str:
    """Rows = metrics (last value), plus last step and the best value of each run's main metric
    (the objective's primary metric for pretraining, from objective.json, e.g. eval/mlm_acc; the
    task metric for fine-tuning) and, for fine-tuning runs,
    method, trainable parameters and bytes stored per task; one column per run."""
    rows: list[tuple[str, list[str]]] = [("last step", [str(r.last_step) for r in runs])]
    for metric in _order(set().union(*(r.last for r in runs)), runs):
        rows.append((metric, [_fmt(r.last[metric][1]) if metric in r.last else "-" for r in runs]))
    for best_metric in dict.fromkeys(r.best_metric for r in runs):
        rows.append((f"best {best_metric}", [f"{_fmt(r.best[1])} @{r.best[0]}" if r.best and r.best_metric == best_metric
                                              else "-" for r in runs]))
    if any(r.summary.get("kind") == "finetune" for r in runs):
        for label, key, fmt in FINETUNE_ROWS:
            rows.append((label, [fmt(r.summary[key]) if key in r.summary else "-" for r in runs]))
    header = ["metric"] + [r.name for r in runs]
    widths = [max(len(header[0]), *(len(n) for n, _ in rows))]
    widths += [max(len(header[i + 1]), *(len(v[i]) for _, v in rows)) for i in range(len(runs))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for name, vals in rows:
        lines.append("  ".join([name.ljust(widths[0])] + [v.rjust(w) for v, w in zip(vals, widths[1:])]))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smooth < 1 or args.max_points < 2:
        print("error: --smooth must be >= 1 and --max-points >= 2", file=sys.stderr)
        return 2
    try:
        runs = [read_run(r, max_points=args.max_points, smooth=args.smooth) for r in args.runs]
    except MetricsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for run in runs:
        if run.skipped_torn_tail:
            print(f"warning: {run.path}: skipped an unterminated last line (crash mid-write)", file=sys.stderr)
        if run.nonfinite:
            counts = ", ".join(f"{k} x{n}" for k, n in sorted(run.nonfinite.items()))
            print(f"warning: {run.path}: non-finite values, left out of the plots: {counts}", file=sys.stderr)
    names = [r.name for r in runs]
    for i, run in enumerate(runs):  # same basename in different parents: disambiguate labels
        if names.count(run.name) > 1:
            run.name = str(Path(args.runs[i]))
    metrics = choose_metrics(runs, args.metrics)
    if not metrics:
        print(f"error: none of the requested metrics were logged by {', '.join(args.runs)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        plot(runs, metrics, out, args.smooth)
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(table(runs))
    print(f"\nwrote {out} ({len(metrics)} plots: {', '.join(metrics)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
