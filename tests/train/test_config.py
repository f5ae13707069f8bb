"""Typed validation of the composed training config: one clear error per mistake."""
import pytest
from hydra import compose, initialize_config_module

from pretrain.train.config import ConfigError, parse_duration, validate


def _compose(*overrides):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["run.name=t", "data.path=/x", *overrides])
    cfg = dict(cfg)
    cfg.pop("hydra", None)
    return cfg


def test_presets_compose_and_validate():
    for overrides in (
        ["model=bert-mini", "parallel=zero2", "precision=bf16"],
        ["model=albert-base", "parallel=zero3_offload", "optim=lamb", "schedule=cosine"],
        ["model=bert-base", "parallel=zero1", "schedule=wsd", "objective=mlm_nsp", "model.sentence_head=nsp"],
    ):
        cfg = validate(_compose(*overrides))
        assert cfg.run.name == "t"


@pytest.mark.parametrize("model, task", [("bert-mini", "sop"), ("albert-base", "sop"), ("modernbert-mini", "none"),
                                         ("modernbert-base", "none")])
def test_default_objective_fits_the_model_preset(model, task):
    """`model=modernbert-*` alone trains (MLM only); BERT/ALBERT keep MLM + SOP."""
    cfg = validate(_compose(f"model={model}"))
    assert cfg.objective.sentence_task == task == cfg.model.sentence_head
    assert cfg.objective.eval_mlm_probability == 0.15
    assert validate(_compose("model=bert-mini", "model.sentence_head=none")).objective.sentence_task == "none"


def test_an_explicit_objective_that_needs_a_missing_head_is_refused():
    with pytest.raises(ConfigError, match="objective=mlm_sop needs a sentence head; model.sentence_head is 'none'"):
        validate(_compose("model=modernbert-mini", "objective=mlm_sop"))


@pytest.mark.parametrize(
    "override, needle",
    [
        ("precision.dtype=fp8", "precision.dtype"),
        ("parallel.zero_stage=4", "parallel.zero_stage"),
        ("objective.masking=words", "objective.masking"),
        ("objective.mlm_probability=1.5", "objective.mlm_probability"),
        ("objective.eval_mlm_probability=-0.1", "objective.eval_mlm_probability"),
        ("data.micro_batch_size=0", "data.micro_batch_size"),
        ("trainer.max_time=abc", "trainer.max_time"),
        ("data.max_seq_len=100000", "data.max_seq_len"),
        ("model.num_heads=5", "model.num_heads"),
        ("trainer.max_steps=ten", "max_steps"),
        ("trainer.max_steps=null", "set at least one budget"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        validate(_compose(override))
    message = str(e.value)
    assert needle in message and "\n" not in message


def test_unknown_key_is_refused():
    cfg = _compose()
    cfg["trainer"] = dict(cfg["trainer"], max_stepz=3)
    with pytest.raises(ConfigError, match="max_stepz"):
        validate(cfg)


def test_missing_run_name():
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = dict(compose(config_name="train", overrides=["data.path=/x"]))
    cfg.pop("hydra", None)
    with pytest.raises(ConfigError, match="run.name"):
        validate(cfg)


def test_durations():
    assert parse_duration("90") == 90
    assert parse_duration("01:30:00") == 5400
    assert parse_duration("2:30") == 150


def test_time_or_token_budget_places_the_schedule_by_fraction():
    from pretrain.train.budget import schedule_steps

    for overrides, span in ((["trainer.max_steps=null", "trainer.max_time=60"], None),
                            (["trainer.max_tokens=100000"], None),
                            (["trainer.max_steps=null", "trainer.max_time=60", "schedule.total_steps=100"], 100),
                            (["trainer.max_steps=500"], 500)):
        t = validate(_compose(*overrides))
        assert schedule_steps(t.schedule.total_steps, t.trainer.max_steps, t.trainer.max_tokens, t.trainer.max_time) == span


@pytest.mark.parametrize("overrides, needle", [
    (["model=bert-tiny", "parallel=pipeline", "parallel.pipeline_stages=3", "cluster.nproc=3"],
     "exceeds the 2 encoder layers"),
    (["parallel=pipeline", "cluster.nproc=3"], "does not divide the world size 3 (cluster.nnodes=1 x cluster.nproc=3)"),
    (["parallel=pipeline", "parallel.zero_stage=2", "cluster.nproc=2"], "zero_stage <= 1"),
    (["parallel=pipeline", "parallel.offload_optimizer=true", "cluster.nproc=2"], "offload"),
    (["parallel=pipeline", "parallel.zero_stage=0", "precision=bf16", "cluster.nproc=2"], "bf16 needs"),
    (["parallel=pipeline", "parallel.pipeline_partition=even", "cluster.nproc=2"], "pipeline_partition"),
])
def test_pipeline_layouts_that_cannot_run_are_refused_before_launch(overrides, needle):
    with pytest.raises(ConfigError) as e:
        validate(_compose(*overrides))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_pipeline_preset_validates_on_a_world_it_divides():
    cfg = validate(_compose("model=bert-base", "parallel=pipeline", "parallel.pipeline_stages=4", "cluster.nproc=8"))
    assert cfg.parallel.pipeline_stages == 4 and cfg.parallel.zero_stage == 1


def test_recipes_set_training_choices_and_the_command_line_still_wins():
    classic = validate(_compose("model=bert-mini"))
    assert classic.recipe.name == "classic" and classic.objective.mlm_probability == 0.15
    assert (classic.schedule.name, classic.optim.lr, classic.model.hidden_dropout) == ("linear", 1e-4, 0.1)
    modern = validate(_compose("model=modernbert-mini", "recipe=modern"))
    assert modern.recipe.name == "modern" and modern.model.arch == "modernbert"  # the architecture is the model's
    assert modern.objective.mlm_probability == 0.3 and modern.objective.eval_mlm_probability == 0.15
    assert modern.objective.sentence_task == "none" and modern.schedule.name == "wsd"
    assert list(modern.optim.betas) == [0.9, 0.98] and modern.model.hidden_dropout == 0.0
    mine = validate(_compose("recipe=modern", "schedule=cosine", "optim.lr=1e-3", "objective.mlm_probability=0.2"))
    assert (mine.schedule.name, mine.optim.lr, mine.objective.mlm_probability) == ("cosine", 1e-3, 0.2)
    with pytest.raises(ConfigError, match="recipe.name"):
        validate(_compose("recipe.name=fancy"))


_MIX = "data.sources=[{name:a,path:/x/a,weight:0.8},{name:b,path:/x/b,weight:0.2}]"


@pytest.mark.parametrize("overrides, needle", [
    (["data.path=null"], "'data.path' must be set"),
    ([_MIX], r"data.path='/x' and data.sources are both set"),
    (["data.path=null", "data.sources=[{name:a,path:/x/a,weight:0},{name:b,path:/x/b,weight:0}]"],
     "must sum to a positive number"),
    (["data.path=null", "data.sources=[{name:a,path:/x/a,weight:1,colour:red}]"], "data.sources"),
    (["data.path=null", "data.sources=[{name:a,path:/x/a}]"], r"'data.sources\[0\].weight' must be set"),
    (["data.source_temperature=2"], "'data.source_temperature' needs data.sources"),
    (["trainer.phases=[{steps:5,set:{data.foo:1}},{}]"], r"'trainer.phases\[0\].set.data.foo' cannot change in a phase"),
    (["trainer.phases=[{steps:5,set:{model:{hidden_size:64}}},{}]"], r"'trainer.phases\[0\].set.model.hidden_size' cannot"),
    (["trainer.phases=[{steps:5,colour:red},{}]"], "colour"),
    (["trainer.phases=[{set:{}},{set:{}}]"], r"'trainer.phases\[0\]': set exactly one of steps or tokens"),
    (["trainer.phases=[{steps:5},{steps:5}]"], r"'trainer.phases\[1\].steps': the last phase runs until"),
    (["trainer.phases=[{steps:0},{}]"], r"'trainer.phases\[0\].steps' = 0; must be > 0"),
    (["trainer.phases=[{steps:5},{set:{data.max_seq_len:4096}}]"],
     r"trainer.phases\[1\] \(phase2\): data.max_seq_len=4096 exceeds model.max_position_embeddings"),
    (["trainer.phases=[{steps:5},{set:{objective.mlm_probability:1.5}}]"], r"trainer.phases\[1\] \(phase2\): .*mlm_probability"),
    (["trainer.phases=[{steps:5},{set:{data.source_weights:{a:1}}}]"], "needs data.sources"),
    (["data.path=null", _MIX, "trainer.phases=[{steps:5},{set:{data.source_weights:{c:1}}}]"],
     r"source_weights.c': no source of that name"),
    (["parallel=pipeline", "cluster.nproc=2", "trainer.phases=[{steps:5},{set:{data.max_seq_len:256}}]"],
     "built for one batch shape"),
])
def test_bad_mixtures_and_phases_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        validate(_compose(*overrides))
    assert "\n" not in str(e.value)


def test_phases_accumulate_and_source_weights_replace_the_weights():
    from pretrain.train.phases import phase_config

    cfg = validate(_compose("data.path=null", _MIX, "trainer.phases=[{steps:5,set:{data.max_seq_len:64}},"
                            "{tokens:1000,set:{objective.mlm_probability:0.3}},{set:{data.source_weights:{b:1}}}]"))
    last = phase_config(cfg, 2)
    assert last.data.max_seq_len == 64 and last.objective.mlm_probability == 0.3
    assert [s.weight for s in last.data.sources] == [0.0, 1.0]
    assert phase_config(cfg, 0).objective.mlm_probability == cfg.objective.mlm_probability
