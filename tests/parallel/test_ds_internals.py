"""The private DeepSpeed names parallel/ds_internals.py relies on exist in the installed release
(an upgrade that removed one fails here, naming it, before any training runs)."""
import deepspeed
import pytest
import torch

from parallel import ds_internals


def test_installed_deepspeed_is_the_tested_minor_release():
    assert deepspeed.__version__.startswith(ds_internals.TESTED_DEEPSPEED + "."), (
        f"deepspeed {deepspeed.__version__} installed; parallel/ds_internals.py was read against "
        f"{ds_internals.TESTED_DEEPSPEED}.x")


def test_every_private_class_name_exists():
    missing = ds_internals.missing_class_names()
    assert not missing, f"private DeepSpeed names gone in {deepspeed.__version__}: {missing}"


def test_a_missing_name_is_an_error_naming_it_not_a_skip():
    class Wrapper:   # an optimizer wrapper without the flag DeepSpeed 0.19 sets
        pass

    with pytest.raises(ds_internals.DeepSpeedInternalsChanged, match=r"Wrapper\._hp_optimizer_states_linked"):
        ds_internals.link_fragment_states(Wrapper())


def test_unfused_master_is_found_by_identity():
    a, b = torch.zeros(2, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.bfloat16)

    class Unfused:
        fp16_groups = [[a, b]]
        fp32_groups = [[a.float(), b.float() + 1]]

    assert torch.equal(ds_internals.unfused_master(Unfused(), b), torch.ones(3))
