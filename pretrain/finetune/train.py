"""The fine-tuning loop: accelerate's `Accelerator.prepare` + a plain PyTorch loop.

accelerate is the engine here (DDP over 1..N processes, gloo on CPU / NCCL on GPUs, bf16/fp16
autocast and loss scaling): fine-tuning needs no ZeRO. All collectives go through accelerate.
Batches are global (`split_batches`): every process trains on its share of the same global batch
whatever the process count, so 1 and N processes take the same steps. Data order comes from
(seed, epoch), dropout from (seed, step, rank), so a resumed run continues where it stopped.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pretrain.train.checkpoint_manager import ResumeError
from pretrain.train.progress import Progress

from . import checkpoint as ckpt
from .config import finetune_hash, primary_metric
from .data import LABELS_FILE, Collator, LabelMap, build_label_map, encode_split, read_split
from .evaluate import predict, readable, score
from .methods import task_state
from .model import build_task_model, load_tokenizer, resolve_backbone, weights_fingerprint

MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the rows fixed by (seed, epoch); accelerate's loader calls set_epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_accelerator(dtype: str):
    """One Accelerator per process. CPU only where no accelerator is present (gloo is then the
    backend for several processes); the precision was resolved by the launcher (precision=auto)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from parallel.device import compute_device

    cpu = compute_device().type == "cpu"
    return Accelerator(mixed_precision=MIXED_PRECISION[dtype], cpu=cpu,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def _labels(run_dir: str, task, train_rows) -> LabelMap:
    """The label map of this run: built from the training file once, then read back (resumes)."""
    path = Path(run_dir) / LABELS_FILE
    built = build_label_map(task, train_rows)
    if path.is_file():
        saved = LabelMap.from_json(json.loads(path.read_text()))
        if saved != built:
            raise ResumeError(f"{path}: the labels of {task.train} changed since this run started; use run.fresh=true")
    return built


class Run:
    """Everything one fine-tuning run holds; built on every process."""

    def __init__(self, cfg: DictConfig, run_dir: str, log=print):
        from parallel.optim import build_optimizer
        from parallel.schedules import build_scheduler

        self.cfg, self.run_dir = cfg, run_dir
        self.acc = make_accelerator(cfg.precision.dtype)
        self.log = log if self.acc.is_main_process else (lambda *a, **k: None)
        t, task = cfg.trainer, cfg.task
        self.backbone = resolve_backbone(cfg.model.path, run_dir, log=self.log)
        self.tokenizer = load_tokenizer(self.backbone)
        train_rows, self.train_report = read_split(task.train, task, require_labels=True)
        self.labels = _labels(run_dir, task, train_rows)
        val_rows, self.val_report = read_split(task.validation, task, require_labels=True)
        self.train_set = encode_split(train_rows, self.train_report, self.tokenizer, task, self.labels, t.max_seq_len)
        self.val_set = encode_split(val_rows, self.val_report, self.tokenizer, task, self.labels, t.max_seq_len)
        del train_rows, val_rows
        self.test_set = self.test_report = None
        if task.test and t.predict_test:
            test_rows, self.test_report = read_split(task.test, task, require_labels=False)
            self.test_set = encode_split(test_rows, self.test_report, self.tokenizer, task, self.labels, t.max_seq_len)
        built = build_task_model(self.backbone, task.type, self.labels, cfg.method, cfg.model, t.max_seq_len, cfg.run.seed)
        self.params, self.head, self.arch = built.params, built.head, built.arch
        self.collate = Collator(self.tokenizer.pad_token_id or 0, self.labels.regression, built.token_types)
        self.sampler = EpochSampler(len(self.train_set), cfg.run.seed)
        drop_last = len(self.train_set) >= t.batch_size
        batches = torch.utils.data.BatchSampler(self.sampler, t.batch_size, drop_last=drop_last)
        train_dl = torch.utils.data.DataLoader(self.train_set, batch_sampler=batches, collate_fn=self.collate)
        self.steps_per_epoch = len(train_dl)
        self.total_steps = t.max_steps or t.max_epochs * self.steps_per_epoch
        model = built.model
        optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(optimizer, cfg.schedule, self.total_steps)
        self.model, self.optimizer, self.train_dl, self.val_dl = self.acc.prepare(
            model, optimizer, train_dl, self._eval_loader(self.val_set))
        self.test_dl = self.acc.prepare(self._eval_loader(self.test_set)) if self.test_set is not None else None
        self.eval_every = t.eval_every or self.steps_per_epoch
        self.checkpoint_every = t.checkpoint_every or self.eval_every
        self.metric = primary_metric(task)

    def _eval_loader(self, split):
        return torch.utils.data.DataLoader(split, batch_size=self.cfg.trainer.eval_batch_size, shuffle=False,
                                           collate_fn=self.collate)

    @property
    def unwrapped(self):
        return self.acc.unwrap_model(self.model)

    def data_summary(self) -> dict:
        reports = {"train": self.train_report, "validation": self.val_report}
        if self.test_report is not None:
            reports["test"] = self.test_report
        return {name: {"path": r.path, "rows": r.rows, "skipped": dict(r.skipped), "truncated": r.truncated}
                for name, r in reports.items()}

    def task_meta(self, state: ckpt.FinetuneState, values: dict) -> dict:
        return {
            "format": "bert-pretrain-task/1", "method": OmegaConf.to_container(self.cfg.method, resolve=True),
            "task": OmegaConf.to_container(self.cfg.task, resolve=True), "labels": self.labels.to_json(),
            "backbone": {"path": self.backbone, "fingerprint": weights_fingerprint(self.backbone), "arch": self.arch},
            "max_seq_len": self.cfg.trainer.max_seq_len, "model_config": OmegaConf.to_container(self.cfg.model, resolve=True),
            "seed": self.cfg.run.seed, "step": state.step, "metric": self.metric, "validation": values,
            "trainable_params": self.params.trainable, "base_params": self.params.base,
        }


def _dropout_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1009 + rank


def finetune(cfg: DictConfig, run_dir: str, log=print) -> dict:
    """Train, validate, keep the best task weights, predict the test file; returns the summary
    ({} when a signal stopped the run: it resumes from its checkpoint when launched again)."""
    return fit(Run(cfg, run_dir, log))


def fit(r: Run) -> dict:
    import signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)} if _is_main_thread() else {}
    try:
        return _fit(r)
    finally:  # an in-process caller (tests, notebooks) gets its own handlers back
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _fit(r: Run) -> dict:
    from pretrain.tracking import build_tracker

    t0 = time.perf_counter()
    cfg, run_dir = r.cfg, r.run_dir
    acc, t = r.acc, cfg.trainer
    state = ckpt.FinetuneState(config_hash=finetune_hash(cfg), world_size=acc.num_processes)
    resume_from = ckpt.latest_checkpoint(run_dir)
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, r.unwrapped, r.optimizer, r.scheduler)
        if state.config_hash != finetune_hash(cfg):
            raise ResumeError(f"{resume_from}: made with another model/task/method/seed config; use run.fresh=true to start over")
        r.log(f"resuming from {resume_from} (step {state.step}, epoch {state.epoch})")
    if acc.is_main_process:
        r.labels.save(Path(run_dir) / LABELS_FILE)
        (Path(run_dir) / "data.json").write_text(json.dumps(r.data_summary(), indent=2) + "\n")
    for rep, name in ((r.train_report, "train"), (r.val_report, "validation"), (r.test_report, "test")):
        if rep is not None:
            r.log(rep.line(name))
    p = r.params
    r.log(f"method={cfg.method.name}: {p.trainable:,} trainable parameters of {p.base:,} ({100 * p.fraction:.3f}%); "
          f"head: {', '.join(sorted(r.head))}")
    resume_state = None
    if resume_from is not None:
        resume_state = dict(state.tracker or {}, step=state.step)
    config_dict = OmegaConf.to_container(cfg, resolve=True)
    tracker = build_tracker(cfg.tracker, run_dir, cfg.run.name, config_dict, resume_state=resume_state,
                            is_main=acc.is_main_process)
    from pretrain.train.preemption import PreemptionFlag

    preempt = PreemptionFlag() if _is_main_thread() else None
    progress = Progress(r.total_steps, state.step, enabled=t.progress and acc.is_main_process)
    stop = None if state.step < r.total_steps else "max_steps reached"
    loss_sum, loss_n, window_t, window_rows = 0.0, 0, time.perf_counter(), 0
    while stop is None:
        r.train_dl.set_epoch(state.epoch)
        loader = acc.skip_first_batches(r.train_dl, state.batches_in_epoch) if state.batches_in_epoch else r.train_dl
        if state.batches_in_epoch:
            loader.set_epoch(state.epoch)
        for batch in loader:
            batch.pop("index")
            r.model.train()
            torch.manual_seed(_dropout_seed(cfg.run.seed, state.step, acc.process_index))
            with acc.autocast():
                loss = r.model(**batch).loss
            acc.backward(loss)
            if cfg.optim.grad_clip:
                acc.clip_grad_norm_([q for q in r.model.parameters() if q.requires_grad], cfg.optim.grad_clip)
            r.optimizer.step()
            r.scheduler.step()
            r.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batches_in_epoch += 1
            loss_sum, loss_n, window_rows = loss_sum + float(loss.detach()), loss_n + 1, window_rows + t.batch_size
            progress.update(state.step, float(loss.detach()))
            if state.step % t.log_every == 0:
                mean = float(acc.reduce(torch.tensor(loss_sum / loss_n, device=acc.device), reduction="mean"))
                elapsed = max(time.perf_counter() - window_t, 1e-9)
                tracker.log({"train/loss": mean, "train/lr": r.scheduler.get_last_lr()[0], "train/epoch": state.epoch,
                             "train/samples_per_s": window_rows / elapsed}, state.step)
                loss_sum, loss_n, window_t, window_rows = 0.0, 0, time.perf_counter(), 0
            if state.step >= r.total_steps:
                stop = "max_steps reached" if t.max_steps else f"{t.max_epochs} epochs done"
            if state.step % r.eval_every == 0 or stop is not None:
                if _validate(r, state, tracker) and t.early_stopping_patience and stop is None:
                    stop = f"early stopping: no better eval/{r.metric} in {t.early_stopping_patience} validations"
            flag = torch.tensor(float(preempt is not None and preempt.local), device=acc.device)
            if float(acc.reduce(flag, reduction="sum")) > 0:
                stop = "preempted by a signal"
            if stop is not None or state.step % r.checkpoint_every == 0:
                _checkpoint(r, state, tracker)
            if stop is not None:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    progress.close()
    r.log(f"stopped at step {state.step}: {stop}")
    if stop.startswith("preempted"):
        tracker.close()
        return {}
    summary = _finish(r, state, tracker, stop, time.perf_counter() - t0)
    tracker.close()
    return summary


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _validate(r: Run, state: ckpt.FinetuneState, tracker) -> bool:
    """Validate; keep the task weights when the main metric improved. True when patience ran out."""
    values = score(predict(r.model, r.val_dl, r.acc, r.cfg.task.type, r.labels.regression), r.cfg.task.type, r.labels)
    state.evals += 1
    tracker.log({f"eval/{k}": v for k, v in values.items()}, state.step)
    value = values[r.metric]
    improved = state.best is None or value > state.best
    r.log(f"eval at step {state.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items())
          + (" (best so far)" if improved else ""))
    if improved:
        state.best, state.best_step, state.bad_evals = value, state.step, 0
        if r.acc.is_main_process:
            ckpt.save_task(r.run_dir, task_state(r.unwrapped, r.cfg.method), r.task_meta(state, values))
        r.acc.wait_for_everyone()
        return False
    state.bad_evals += 1
    return state.bad_evals >= r.cfg.trainer.early_stopping_patience


def _checkpoint(r: Run, state: ckpt.FinetuneState, tracker) -> None:
    state.tracker = tracker.state()
    state.world_size = r.acc.num_processes
    if r.acc.is_main_process:
        path = ckpt.save_checkpoint(r.run_dir, r.unwrapped, r.optimizer, r.scheduler, state, r.cfg.trainer.keep_checkpoints)
        r.log(f"saved checkpoint {path}")
    r.acc.wait_for_everyone()


def _finish(r: Run, state: ckpt.FinetuneState, tracker, stop: str, wall: float) -> dict:
    """Reload the best task weights (the stored ones, exactly as a user would), re-validate, predict test."""
    from .reload import load_into

    task_dir = os.path.join(r.run_dir, ckpt.TASK_DIR)
    load_into(r.unwrapped, r.cfg.method, task_dir)
    values = score(predict(r.model, r.val_dl, r.acc, r.cfg.task.type, r.labels.regression), r.cfg.task.type, r.labels)
    if r.test_dl is not None:
        preds = predict(r.model, r.test_dl, r.acc, r.cfg.task.type, r.labels.regression)
        if r.acc.is_main_process:
            with open(os.path.join(r.run_dir, "test_predictions.jsonl"), "w") as f:
                for row in range(len(preds.index)):
                    f.write(json.dumps(readable(preds, r.labels, r.test_set.lines, row, r.cfg.task.type)) + "\n")
            if r.test_set.has_labels:
                values_test = score(preds, r.cfg.task.type, r.labels)
                tracker.log({f"test/{k}": v for k, v in values_test.items()}, state.step)
    task_bytes = (Path(task_dir) / ckpt.TASK_WEIGHTS).stat().st_size
    p = r.params
    summary = {
        "kind": "finetune", "method": r.cfg.method.name, "task_type": r.cfg.task.type,
        "primary_metric": f"eval/{r.metric}", f"best/eval_{r.metric}": state.best, "best_step": state.best_step,
        "final_step": state.step, "stop_reason": stop, "trainable_params": p.trainable, "base_params": p.base,
        "trainable_fraction": p.fraction, "task_bytes": task_bytes, "wall_s": round(wall, 2),
        "world_size": r.acc.num_processes, "precision": r.cfg.precision.dtype,
        **{f"reloaded/eval_{k}": v for k, v in values.items()},  # the stored best weights, validated again
    }
    tracker.summary(summary)
    line = (f"{r.cfg.run.name}: method={r.cfg.method.name} best eval/{r.metric}={state.best:.4f} @step {state.best_step} "
            f"| trainable {p.trainable:,} ({100 * p.fraction:.3f}% of {p.base:,}) | task weights {_size(task_bytes)} "
            f"| {wall:.0f}s, {state.step} steps ({stop})")
    r.log(line)
    summary["line"] = line
    return summary


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"

