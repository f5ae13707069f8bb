"""How a model is split into pipeline stages, before any process group exists."""
from __future__ import annotations

import pytest

from parallel.pipe_model import find_ties, pipe_layout
from parallel.topology import Topology
from pretrain.model import ModelConfig, build_model


def tiny(arch="bert", layers=4, **kw):
    cfg = dict(arch=arch, vocab_size=300, hidden_size=32, num_layers=layers, num_heads=4, intermediate_size=48,
               max_position_embeddings=32)
    if arch == "albert":
        cfg.update(embedding_size=16)
    cfg.update(kw)
    return build_model(ModelConfig(**cfg))


def test_bert_ties_the_decoder_to_the_word_embeddings_across_first_and_last_layer():
    model = tiny()
    (tie,) = find_ties(model.layers())
    assert tie.layers == [0, 5]
    assert tie.attrs == {0: ["word_embeddings.weight"], 5: ["mlm.decoder_weight"]}


def test_albert_ties_its_shared_layer_at_every_occurrence():
    model = tiny("albert", layers=4)
    word, shared = sorted(find_ties(model.layers()), key=lambda t: t.key)
    assert word.layers == [0, 5]
    assert shared.layers == [1, 2, 3, 4]
    assert shared.attrs[1] == [n for n, _ in model.encoder.layers[0].named_parameters()]


@pytest.mark.parametrize("method", ["parameters", "uniform", "type:EncoderLayer"])
@pytest.mark.parametrize("stages", [2, 4])
def test_every_split_puts_embeddings_first_heads_last_and_names_every_parameter(method, stages):
    model = tiny()
    layout = pipe_layout(model, stages, method)
    parts = layout.parts
    assert parts[0] == 0 and parts[-1] == 6 and all(a < b for a, b in zip(parts, parts[1:]))
    assert layout.stage_of(0) == 0 and layout.stage_of(5) == stages - 1
    canonical = {name for name, _ in model.named_parameters()}
    assert set(layout.plain_names.values()) == canonical
    assert layout.layer_prefixes == ["embeddings."] + [f"encoder.layers.{i}." for i in range(4)] + ["heads."]
    if method == "type:EncoderLayer":
        encoder_per_stage = [sum(1 for i in layout.stage_layers(s) if 1 <= i <= 4) for s in range(stages)]
        assert encoder_per_stage == [4 // stages] * stages


def test_albert_layout_maps_every_occurrence_to_the_shared_names():
    model = tiny("albert", layers=4)
    layout = pipe_layout(model, 2, "type:EncoderLayer")
    shared = [v for k, v in layout.plain_names.items() if k.startswith("tied_modules.tie001.")]
    assert shared and all(v.startswith("encoder.layers.0.") for v in shared)
    assert layout.plain_names["tied_modules.tie000.mlm.decoder_weight"] == "embeddings.word_embeddings.weight"


def test_parameter_split_balances_parameters_not_layers():
    model = tiny(layers=4, vocab_size=5000)  # big embedding and decoder: a short first and last stage
    layout = pipe_layout(model, 3, "parameters")
    assert layout.stage_layers(0) == range(0, 1)


@pytest.mark.parametrize("stages,method,needle", [
    (5, "parameters", "exceeds the model's 4 encoder layers"),
    (2, "balanced", "pipeline_partition='balanced'"),
    (2, "type:Conv", "no layer of that type"),
])
def test_impossible_splits_are_one_line_errors(stages, method, needle):
    with pytest.raises(ValueError, match=needle) as e:
        pipe_layout(tiny(), stages, method)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("stages,dp", [(2, 1), (2, 2), (4, 2), (3, 2)])
def test_topology_ranks_follow_deepspeeds_pipe_data_order(stages, dp):
    import torch
    from deepspeed.runtime.pipe.topology import PipeDataParallelTopology

    ds = PipeDataParallelTopology(num_pp=stages, num_dp=dp)
    for rank in range(stages * dp):
        topo = Topology(rank, 0, stages * dp, 1, 0, 1, torch.device("cpu"), "gloo", stages)
        coord = ds.get_coord(rank)
        assert (coord.pipe, coord.data) == (topo.pp_rank, topo.dp_rank)
