"""Dotted config keys (jaxhybrid/config_keys.py): flatten and back, lookups, and the keys
an unknown one is near, as every command's flag errors and the tools name them."""
from __future__ import annotations

import ml_collections
import pytest

from jaxhybrid.config_defaults import base_config
from jaxhybrid.config_keys import (ConfigKeyError, field_value, flatten, get_field, near_keys,
                                   unflatten, unknown_key_message)


def test_flatten_and_unflatten_round_trip_a_config():
    c = base_config("dhm")
    flat = flatten(c)
    assert flat["optimizer.learning_rate"] == c.optimizer.learning_rate
    assert flat["objective.beta"] == c.objective.beta
    assert ml_collections.ConfigDict(unflatten(flat)).to_dict() == c.to_dict()
    assert flatten({"a": {"b": [1, 2]}}, lists_as_tuples=True) == {"a.b": (1, 2)}
    assert flatten({"a": {}, "b": 1}) == {"b": 1}


def test_field_value_and_get_field():
    c = base_config()
    assert field_value(c, "data.source") == "digits"
    assert field_value(c, "data.nothing", None) is None
    with pytest.raises(KeyError):
        field_value(c, "data.nothing")
    assert get_field(c, "optimizer.b2") == 0.999
    with pytest.raises(ConfigKeyError, match=r"Did you mean optimizer.learning_rate"):
        get_field(c, "optimizer.learning_rat")
    with pytest.raises(ConfigKeyError, match=r"is a section, not a value"):
        get_field(c, "optimizer")


@pytest.mark.parametrize("key, hint", [
    ("optimzer.learning_rate", "(did you mean optimizer?)"),        # a misspelt section
    ("modle.width", "(did you mean model?)"),
    ("batchsize", "(did you mean batch_size?)"),
    ("model.beta", "(did you mean objective.beta?)"),               # moved to another section
    ("joint_weight", None),                                         # the DHM has no λ
])
def test_an_unknown_key_names_what_it_was_likely_meant_to_be(key, hint):
    message = unknown_key_message(base_config("dhm"), key)
    assert message.startswith(f"unknown config key {key!r}")
    if hint:
        assert hint in message
    else:
        assert "did you mean" not in message
    assert unknown_key_message(base_config("dhm"), "objective.beta") is None


def test_near_keys_put_a_moved_field_first():
    valid = sorted(flatten(base_config("dhm")))
    assert near_keys("model.beta", valid)[0] == "objective.beta"


def test_a_saved_field_this_version_no_longer_has_is_left_out(tmp_path):
    """A run saved by a version with a field since removed still loads and checks."""
    import json

    from jaxhybrid.config_check import check_config
    from jaxhybrid.rundir import config_dict
    from jaxhybrid.saved_config import config_from_run
    saved = config_dict(base_config("classifier"))
    saved["data"]["a_removed_field"] = 3
    saved["batch_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = config_from_run(str(tmp_path))
    assert "a_removed_field" not in config.data and config.batch_size == 64
    check_config(config)
