"""Progressive stacking: the plan, its one-line config errors, and which weights a growth copies."""
import pytest
from omegaconf import OmegaConf

from pretrain.model import ModelConfig, build_model
from pretrain.train.config import ConfigError, validate
from pretrain.train.stacking import StackingPlan, check_stacking, growth_pairs


def plan(layers, steps):
    return StackingPlan.from_config(OmegaConf.create({"layers": layers, "steps": steps}))


def test_depth_is_a_pure_function_of_the_step():
    p = plan([3, 6, 12], [100, 300])
    assert [p.depth_at(s) for s in (0, 99, 100, 299, 300, 10_000)] == [3, 3, 6, 6, 12, 12]
    assert p.growth_at(100) == (3, 6) and p.growth_at(300) == (6, 12) and p.growth_at(101) is None
    assert StackingPlan.from_config(OmegaConf.create({"layers": [], "steps": []})) is None


@pytest.mark.parametrize("layers, steps, arch, zero, stages, match", [
    ([3, 6], [], "bert", 0, 1, "one growth step per stage"),
    ([3, 2, 12], [5, 9], "bert", 0, 1, "increasing depths"),
    ([3, 12], [5], "bert", 0, 1, "at most double"),
    ([3, 6], [5], "bert", 0, 1, "model.num_layers=12"),
    ([6, 12], [0], "bert", 0, 1, "steps >= 1"),
    ([6, 12], [5], "albert", 0, 1, "ALBERT"),
    ([6, 12], [5], "bert", 3, 1, "zero_stage=3"),
    ([6, 12], [5], "bert", 1, 2, "pipeline_stages"),
])
def test_impossible_plans_are_one_line_errors(layers, steps, arch, zero, stages, match):
    with pytest.raises(ValueError, match=match) as e:
        check_stacking(OmegaConf.create({"layers": layers, "steps": steps}), 12, arch, zero, stages)
    assert "\n" not in str(e.value)


def test_the_training_config_refuses_a_bad_plan_naming_the_key():
    raw = OmegaConf.create({"run": {"name": "x"}, "data": {"path": "d"}, "model": {"num_layers": 4},
                            "trainer": {"stacking": {"layers": [1, 4], "steps": [3]}}})
    with pytest.raises(ConfigError, match="trainer.stacking.layers"):
        validate(raw)


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_growth_copies_layer_i_to_old_plus_i(arch):
    extra = dict(linear_bias=False, norm_bias=False) if arch == "modernbert" else {}
    model = build_model(ModelConfig(arch=arch, vocab_size=50, hidden_size=16, num_layers=4, num_heads=2,
                                    intermediate_size=24, **extra))
    pairs = dict(growth_pairs(model, 2, 4))
    assert pairs["encoder.layers.2.mlp.Wi.weight" if arch == "modernbert" else "encoder.layers.2.ffn_in.weight"] \
        == ("encoder.layers.0.mlp.Wi.weight" if arch == "modernbert" else "encoder.layers.0.ffn_in.weight")
    assert all(d.startswith(("encoder.layers.2.", "encoder.layers.3.")) for d in pairs)
    if arch == "modernbert":  # layer 0 has no attention norm: layer 2 keeps its own
        assert "encoder.layers.2.attn_norm.weight" not in pairs
        assert pairs["encoder.layers.3.attn_norm.weight"] == "encoder.layers.1.attn_norm.weight"
