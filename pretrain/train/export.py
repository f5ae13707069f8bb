"""Export a run's newest complete checkpoint as consolidated fp32 weights in Hugging Face format."""
from __future__ import annotations


from omegaconf import OmegaConf


def export_run(run_dir: str, out_dir: str, checkpoint: str | None = None, log=print) -> str:
    from parallel.convert import consolidate_fp32
    from pretrain.model import build_model
    from pretrain.model.config import ModelConfig
    from pretrain.shardformat import load_manifest
    from pretrain.train.checkpoint_manager import CheckpointManager, ResumeError
    from pretrain.train.rundir import load_run_config

    cfg = load_run_config(run_dir)
    if checkpoint is None:
        candidates = CheckpointManager(run_dir, log=log).complete()
        if not candidates:
            raise ResumeError(f"{run_dir}/checkpoints: no complete checkpoint to export")
        checkpoint = candidates[0]
    mcfg = ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))
    mcfg.init_from = None
    mcfg.gradient_checkpointing = False
    if cfg.trainer.get("phases"):   # the model settings of the phase the checkpoint was in (rotary theta, window)
        from parallel.checkpoint import peek_checkpoint
        from pretrain.train.phases import Phases

        phase = int(peek_checkpoint(checkpoint).get("phase", 0))
        mcfg = Phases(cfg).model_config(phase, mcfg)
    state = consolidate_fp32(checkpoint)
    depth = _stacked_depth(cfg, checkpoint)
    if depth is not None and depth < mcfg.num_layers:  # progressive stacking stopped early: the depth reached
        state = {k: v for k, v in state.items() if not _layer_at_or_above(k, depth)}
        mcfg.num_layers = depth
        log(f"export: progressive stacking had reached {depth} of {cfg.model.num_layers} layers at {checkpoint}")
    from pretrain.objectives import build_objective

    objective = build_objective(cfg.objective, mcfg)
    model = build_model(mcfg)
    model.attach_objective(objective)   # its own modules are in the checkpoint too
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:  # never written by this trainer (saves check first); an older or foreign checkpoint
        raise ResumeError(f"{checkpoint}: weights are not finite ({len(bad)} tensors, e.g. {bad[0]}); not exporting")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {name for name in missing if _is_tied(model, name)}
    if set(missing) - tied or unexpected:
        raise ResumeError(
            f"{checkpoint}: weights do not match the run's model (missing {sorted(set(missing) - tied)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    from pretrain.data.sources import data_sources

    manifest = load_manifest(data_sources(cfg.data)[0].path)   # a mixture's sources share one tokenizer
    objective.export(model, manifest.tokenizer_file, out_dir, log)
    log(f"exported {checkpoint} -> {out_dir}")
    return out_dir


def _stacked_depth(cfg, checkpoint: str):
    """The depth a progressively stacked run had at `checkpoint` (step_<N>), or None."""
    import os
    import re

    from pretrain.train.stacking import StackingPlan

    stacking = cfg.trainer.get("stacking") if "trainer" in cfg else None
    plan = StackingPlan.from_config(stacking) if stacking is not None else None
    found = re.search(r"step_(\d+)$", os.path.basename(os.path.normpath(checkpoint)))
    if plan is None or found is None:
        return None
    return plan.depth_at(int(found.group(1)) - 1)


def _layer_at_or_above(key: str, depth: int) -> bool:
    import re

    found = re.match(r"encoder\.layers\.(\d+)\.", key)
    return found is not None and int(found.group(1)) >= depth


def _is_tied(model, name: str) -> bool:
    """A missing key is fine when its tensor is shared with one that was loaded (decoder <-> embeddings)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(name)
    if target is None:
        return False
    return any(p is target and n != name for n, p in params.items())
