"""The training loop: data -> engine.train_step -> metrics, eval, checkpoints, until a budget ends.

Everything distributed sits behind `parallel` (engine, collectives); everything that must
survive a restart is in `TrainState` plus the engine's checkpoint (CheckpointManager). What a
non-finite step or a loss spike does is the Watchdog's business (pretrain/train/nonfinite.py).
"""
from __future__ import annotations

import os
import time

from omegaconf import DictConfig, OmegaConf

from parallel.topology import all_gather_object, barrier
from pretrain.data import cut_cursor, merge_cursors
from pretrain.model import apply_runtime_settings
from pretrain.model.layout import batch_examples
from pretrain.train.budget import Budget, JobDeadline
from pretrain.train.build import build_everything
from pretrain.train.evaluate import evaluate
from pretrain.train.phases import progress_since, rest_of_run
from pretrain.train.nonfinite import NonFiniteError, NonFiniteState, Watchdog
from pretrain.train.preemption import PreemptionFlag, checkpoint_signals
from pretrain.train.progress import BudgetProgress
from pretrain.train.rundir import mark_finished
from pretrain.train.state import TrainState
from pretrain.train.throughput import Meter, peak_flops_per_device


def train(cfg: DictConfig, run_dir: str) -> None:
    parts = build_everything(cfg, run_dir)
    topo, engine, loader, tracker = parts.topo, parts.engine, parts.train_loader, parts.tracker
    state, log = parts.state, parts.log
    budget = Budget(cfg.trainer.max_steps, cfg.trainer.max_tokens, cfg.trainer.max_time, state.train_seconds)
    # SLURM time-limit safety net: rank 0 polls, the all-reduce below tells every rank.
    deadline = JobDeadline.from_env(cfg.cluster, log=log) if topo.rank == 0 else None
    preempt = PreemptionFlag(checkpoint_signals(cfg.cluster.signal), deadline=deadline)
    peak = peak_flops_per_device(cfg.precision.dtype, cfg.trainer.peak_flops, topo.device)
    log(f"precision {cfg.precision.dtype}; MFU against {peak.line()}")
    meter = Meter()
    progress = BudgetProgress(budget, state, enabled=cfg.trainer.progress and topo.rank == 0)
    log(f"budget: {', '.join(budget.describe(k) for k in budget.used(0, 0, 0.0))}; {cfg.schedule.name} lr schedule "
        + (f"over {parts.schedule_span} steps" if parts.schedule_span else "placed by the fraction of the budget used"))
    batches = iter(loader)
    # Stages of one pipeline replica train on the same examples: the first stage records them.
    recorder = SampleRecorder(run_dir, topo.rank) if cfg.trainer.record_samples and topo.pp_rank == 0 else None
    watchdog = Watchdog.from_config(cfg, state, parts.checkpoints, log)
    if parts.stacking is not None:
        watchdog.on_rewind = parts.stacking.after_rewind
    ga = cfg.trainer.grad_accum
    sources = loader.source_names or ()   # a mixture's sources: counted per source (train/source/<name>/...)
    stop_reason = budget.exhausted(state.step, state.consumed_tokens, state.train_seconds)
    segmented = parts.phases is not None and parts.phases.segmented()
    if segmented and state.step == 0:   # a resumed run's segment is in its checkpoint
        engine.start_schedule_segment(*parts.phases.segment(0, state, budget))
    if parts.branched is not None and cfg.run.branch_schedule == "restart":
        restart_schedule(cfg, engine, state, budget, log)
    while stop_reason is None:
        while parts.phases is not None and parts.phases.due(state):
            batches = enter_phase(parts, state, batches, budget, log)
        if parts.stacking is not None:
            parts.stacking.before_step(state.step)
        engine.set_schedule_progress(parts.phases.progress(state, budget) if segmented else
                                     progress_since(budget, state))
        t0 = time.perf_counter()
        micro = [next(batches) for _ in range(ga)]
        data_seconds = time.perf_counter() - t0
        # The step's one all-reduce also carries the counts and every rank-local reason to stop
        # (read just before it), so all ranks take the same branch below (a lone rank
        # checkpointing would hang the others) with no collective of the loop's own. Only the
        # first pipeline stage counts data: the other stages of a replica see the same batches.
        counts_data = topo.pp_rank == 0
        per_batch = [(int(b["attention_mask"].sum()), batch_examples(b)) for b in micro] if counts_data else []
        local = [sum(t for t, _ in per_batch), sum(n for _, n in per_batch),
                 sum(b["input_ids"].numel() for b in micro) if counts_data else 0]
        local += source_counts(micro, per_batch, sources)
        metrics = engine.train_step(micro, carry=lambda: [*local, float(preempt.local), budget.local_seconds()])
        if recorder is not None:
            recorder.record(state.step + 1, micro)
        *counts, preempted, seconds = metrics.pop("carried")
        tokens, samples, positions = (int(v) for v in counts[:3])
        preempted = int(preempted)
        add_source_counts(state, sources, counts[3:])
        nonfinite = metrics.get("nonfinite", 0.0)   # from the global loss and gradient norm: the same everywhere
        state.train_seconds = seconds / topo.world_size  # the ranks' mean clock: one value everywhere
        state.step += 1
        state.consumed_tokens += tokens
        state.consumed_samples += samples
        meter.add(tokens, samples, parts.flops_for(micro, metrics), data_seconds, positions)
        progress.update(state, metrics.get("loss"))
        verdict = watchdog.check(engine, state.step, metrics, nonfinite > 0)  # may rewind the engine
        if state.step % cfg.trainer.log_every == 0 or verdict.event:
            speed = meter.summary(topo.world_size, peak.flops, topo.device)
            used = budget.fraction(state.step, state.consumed_tokens, state.train_seconds)
            phase = {"train/phase": state.phase + 1} if parts.phases is not None else {}
            tracker.log({**_train_metrics(metrics, speed, state, parts.objective), **_source_metrics(state), **phase,
                         "train/budget_used": used,
                         "train/seconds": state.train_seconds, **watchdog.metrics(verdict)}, state.step)
            meter.reset()
        if verdict.stop:
            _stop(verdict.stop, progress, tracker)
        if cfg.trainer.eval_every and state.step % cfg.trainer.eval_every == 0:
            run_eval(engine, parts, cfg, tracker, state.step, log)
        stop_reason = budget.exhausted(state.step, state.consumed_tokens, state.train_seconds)
        if preempted:
            stop_reason = "preempted (checkpoint signal or the job's time limit)"
        if stop_reason is not None or state.step % cfg.trainer.checkpoint_every == 0:
            save_checkpoint(cfg, parts, state, watchdog, progress)
    progress.close()
    if recorder is not None:
        recorder.close()
    log(f"stopped at step {state.step}: {stop_reason}")
    if stop_reason.startswith("preempted"):
        tracker.close()
        return
    if cfg.trainer.eval_every and state.step % cfg.trainer.eval_every != 0:
        run_eval(engine, parts, cfg, tracker, state.step, log)
    tracker.close()
    if cfg.trainer.export_on_finish and topo.rank == 0:
        from pretrain.train.export import export_run

        export_run(run_dir, os.path.join(run_dir, "export"), log=log)
    barrier()
    if topo.rank == 0:  # a requeued or chained SLURM job finds this and has nothing left to do
        mark_finished(run_dir, state.step, stop_reason)


def run_eval(engine, parts, cfg, tracker, step: int, log) -> None:
    results = evaluate(engine, parts.objective, parts.eval_loader_factory, cfg.trainer.eval_batches)
    tracker.log(results, step)
    names = ("eval/loss", *(f"eval/{m}" for m in parts.objective.shown))
    shown = ", ".join(f"{k.split('/')[1]}={results[k]:.4f}" for k in names if k in results)
    log(f"eval at step {step}: {shown}")


class SampleRecorder:
    """Appends which examples each step trained on, so exactly-once claims can be audited:
    [step, epoch, doc id, example index] (+ the source's index for a mixture) per line."""

    def __init__(self, run_dir: str, rank: int):
        import json

        self._json = json
        self._file = open(os.path.join(run_dir, "logs", f"samples-rank{rank}.jsonl"), "a")

    def record(self, step: int, micro: list) -> None:
        """One line per example (packed rows hold several)."""
        for b in micro:
            rows = zip(b["epoch"].tolist(), b["doc_id"].tolist(), b["example_index"].tolist())
            source = [b["source"]] if "source" in b else []   # a mixture: the source's index in data.sources
            for epoch, doc, example in rows:
                self._file.write(self._json.dumps([step, epoch, doc, example, *source]) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _train_metrics(metrics: dict, speed: dict, state: TrainState, objective) -> dict:
    out = {
        "train/loss": metrics["loss"],
        **objective.summarize(metrics, "train"),
        "train/lr": metrics["lr"],
        "train/grad_norm": metrics.get("grad_norm") or 0.0,
        "train/consumed_tokens": state.consumed_tokens,
        "train/consumed_samples": state.consumed_samples,
    }
    if metrics.get("loss_scale"):
        out["train/loss_scale"] = metrics["loss_scale"]
    out.update({f"train/{k}": v for k, v in speed.items()})
    return out


def source_counts(micro: list, per_batch: list, sources: tuple) -> list:
    """[tokens, samples] of every source (in `sources` order) over this rank's micro-batches
    (`per_batch`: each one's (tokens, samples); empty on the stages that do not count data)."""
    out = [0] * (2 * len(sources))
    for b, (tokens, samples) in zip(micro, per_batch):
        if "source" in b:
            out[2 * b["source"]] += tokens
            out[2 * b["source"] + 1] += samples
    return out


def add_source_counts(state: TrainState, sources: tuple, summed: list) -> None:
    for i, name in enumerate(sources):
        got = state.sources.setdefault(name, {"tokens": 0, "samples": 0})
        got["tokens"] += int(summed[2 * i])
        got["samples"] += int(summed[2 * i + 1])


def _source_metrics(state: TrainState) -> dict:
    """train/source/<name>/{samples,tokens} (consumed so far, all ranks) and each source's share."""
    total = sum(c["samples"] for c in state.sources.values()) or 1
    out = {}
    for name, c in state.sources.items():
        out[f"train/source/{name}/samples"] = c["samples"]
        out[f"train/source/{name}/tokens"] = c["tokens"]
        out[f"train/source/{name}/sample_share"] = c["samples"] / total
    return out


def restart_schedule(cfg, engine, state: TrainState, budget, log) -> None:
    """A branch with run.branch_schedule=restart: the run's `schedule` from the branch step on, over
    schedule.total_steps or the rest of the budget (WSD: try a decay from a stable checkpoint)."""
    from parallel.config import ScheduleConfig

    schedule = ScheduleConfig(**OmegaConf.to_container(cfg.schedule, resolve=True))
    span = schedule.total_steps or rest_of_run(budget, state)
    schedule.total_steps = None
    state.schedule_start = [state.step, state.consumed_tokens, state.train_seconds]
    engine.start_schedule_segment(schedule, span)
    log(f"lr schedule: {schedule.name} restarts at the branch (step {state.step}) over "
        + (f"{span} steps" if span else "the rest of the budget"))


def gather_cursor(parts) -> dict:
    """Collective: the global data cursor. One per data-parallel replica: the first stage of
    each speaks for its replica."""
    cursors = all_gather_object(parts.train_loader.state_dict() if parts.topo.pp_rank == 0 else None)
    return merge_cursors([c for c in cursors if c is not None])


def enter_phase(parts, state: TrainState, batches, budget, log):
    """Collective, on every rank at the same step: the next phase's loader continues from the
    global cursor (moved to whole documents where the phase re-cuts them), the model takes the
    phase's settings and, when phases set the schedule, its segment starts; returns its batches."""
    old, new = state.phase, state.phase + 1
    cursor = gather_cursor(parts)
    batches.close()   # the old loader's workers stop
    if parts.phases.recuts(old, new):
        cursor, cut = cut_cursor(cursor)
        log(f"data: {cut} document(s) the reader had started are counted as read (the new phase cuts "
            "documents into examples differently)")
    settings = parts.phases.config(new)
    loader = parts.make_train_loader(settings.data, settings.objective)
    loader.load_state_dict(cursor)
    parts.train_loader = loader
    state.phase, state.phase_start_step, state.phase_start_tokens = new, state.step, state.consumed_tokens
    state.schedule_start = [state.step, state.consumed_tokens, state.train_seconds]
    parts.model_now["cfg"] = parts.phases.model_config(new, parts.model_now["cfg"])
    apply_runtime_settings(parts.engine.module, parts.model_now["cfg"])
    if parts.phases.segmented():
        parts.engine.start_schedule_segment(*parts.phases.segment(new, state, budget))
    log(f"{parts.phases.describe(new)} starts after step {state.step}")
    return iter(loader)


def save_checkpoint(cfg, parts, state: TrainState, watchdog: Watchdog, progress) -> None:
    state.data_cursor = gather_cursor(parts)
    state.tracker = parts.tracker.state()

    def client_state() -> dict:
        return {"train_state": state.to_dict(), "config": OmegaConf.to_container(cfg, resolve=True)}

    try:
        parts.checkpoints.save(parts.engine, state.step, client_state())
    except NonFiniteState:  # never written; the policy rewinds (then saves) or stops
        verdict = watchdog.unsaveable(parts.engine, state.step)
        if verdict.stop:
            _stop(verdict.stop, progress, parts.tracker)
        parts.checkpoints.save(parts.engine, state.step, client_state())


def _stop(reason: str, progress, tracker) -> None:
    """Every rank raises in the same step; the launcher prints the line (logs/error-rank<k>.txt)."""
    progress.close()
    tracker.close()
    raise NonFiniteError(reason)
