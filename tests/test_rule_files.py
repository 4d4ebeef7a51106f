"""Rule files are validated whole before anything is built from them: the config's options in
range, every weight's name, dtype, shape and finiteness, the step sizes, ``max_t``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from learnedopt.optim import (LSTMOptimizer, MetaSGD, PretrainedError, TurtleOptimizer, load_rule,
                              shipped_rules)
from learnedopt.optim import pretrained
from learnedopt.rules import MetaLSTMRule, TurtleRule

OWNER = {"metalstm": LSTMOptimizer, "turtle": TurtleOptimizer, "metasgd": MetaSGD}


def rule_file(kind: str) -> dict:
    """A valid rule dict of ``kind`` (untrained weights)."""
    torch.manual_seed(0)
    data = {"format": "learnedopt-rule/1", "kind": kind, "config": {}, "state_dict": {},
            "max_t": None, "source": {}}
    if kind != "metasgd":
        rule = MetaLSTMRule() if kind == "metalstm" else TurtleRule()
        data["config"] = rule.config()
        data["state_dict"] = {k: v.detach().clone() for k, v in rule.state_dict().items()}
    if kind != "metalstm":
        data["alpha"] = {"mean": 0.1, "median": 0.1, "std": 0.0, "min": 0.1, "max": 0.1,
                         "numel": 10}
    return data


def load_into_optimizer(tmp_path, data: dict, name: str = "rule.pt"):
    path = tmp_path / name
    torch.save(data, path)
    return OWNER[data["kind"]].from_pretrained(path, [nn.Parameter(torch.ones(3))])


@pytest.mark.parametrize("kind,weight", [("turtle", "weights.0"), ("turtle", "biases.5"),
                                         ("metalstm", "w_ih"), ("metalstm", "b_f")])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused(tmp_path, kind, weight, bad):
    data = rule_file(kind)
    assert isinstance(load_into_optimizer(tmp_path, data), OWNER[kind])  # as made, it loads
    data["state_dict"][weight].view(-1)[0] = bad
    with pytest.raises(PretrainedError, match=f"weight '{weight}' has 1 non-finite"):
        load_into_optimizer(tmp_path, data)
    data["state_dict"] = {k: torch.full_like(v, math.nan) for k, v in data["state_dict"].items()}
    with pytest.raises(PretrainedError, match="non-finite"):
        load_into_optimizer(tmp_path, data)


@pytest.mark.parametrize("kind,option,value,message", [
    ("turtle", "beta", 5.0, r"beta must be in \[0, 1\], got 5"),
    ("turtle", "beta", -0.1, r"beta must be in \[0, 1\]"),
    ("turtle", "beta", math.nan, r"beta must be in \[0, 1\], got nan"),
    ("turtle", "hidden_size", 10**6, r"hidden_size must lie in 1\.\.64"),
    ("turtle", "hidden_size", 0, r"hidden_size must lie in 1\.\.64"),
    ("turtle", "num_hidden_layers", 10**9, r"num_hidden_layers must lie in 0\.\.15"),
    ("turtle", "grad_clamp", -1.0, "grad_clamp must be > 0"),
    ("turtle", "grad_clamp", math.nan, "grad_clamp must be > 0"),
    ("turtle", "use_t", "yes", "use_t must be a bool"),
    ("turtle", "hidden_size", 20.5, "hidden_size must be an int"),
    ("metalstm", "hidden_size", 10**6, r"hidden_size must lie in 1\.\.64"),
    ("metalstm", "input_size", 3, "input_size must be 4"),
    ("metalstm", "p", 0.0, r"p must be in \[5.2"),
    ("metalstm", "p", math.inf, r"p must be in \["),
    ("metalstm", "p", 89.0, r"p must be in \[.*87.3"),  # e^p overflows float32
    ("metalstm", "log_eps", -1.0, r"log_eps must be in \[0, 1\]"),
    ("metalstm", "log_eps", math.nan, r"log_eps must be in \[0, 1\]"),
    ("metalstm", "strict", "no", "strict must be a bool"),
])
def test_config_options_out_of_range_are_refused_before_anything_is_built(
        tmp_path, monkeypatch, kind, option, value, message):
    data = rule_file(kind)
    data["config"][option] = value
    # Nothing may be built from a file that fails validation: building a rule of hidden size
    # 10**6 would try to allocate terabytes before any shape check.
    def no_building(*args, **kwargs):
        raise AssertionError("a rule was built before its file was validated")
    monkeypatch.setattr(pretrained, "build_rule", no_building)
    with pytest.raises(PretrainedError, match=f"bad {kind} config.*{message}"):
        load_into_optimizer(tmp_path, data)
    # The rule classes refuse the same options when built directly.
    cls = MetaLSTMRule if kind == "metalstm" else TurtleRule
    with pytest.raises((TypeError, ValueError), match=message):
        cls(**data["config"])


@pytest.mark.parametrize("kind", ["turtle", "metalstm"])
def test_weights_that_do_not_match_the_config_are_refused(tmp_path, kind):
    for name in shipped_rules():
        load_rule(name)  # the shipped files pass the validation
    data = rule_file(kind)
    data["config"]["hidden_size"] = 64  # in range, but the weights are for 20
    with pytest.raises(PretrainedError, match=r"has shape .*expected"):
        load_into_optimizer(tmp_path, data)
    data = rule_file(kind)
    name = next(iter(data["state_dict"]))
    data["state_dict"]["extra"] = torch.zeros(2)
    with pytest.raises(PretrainedError, match=r"unexpected \['extra'\]"):
        load_into_optimizer(tmp_path, data)
    del data["state_dict"]["extra"]
    del data["state_dict"][name]
    with pytest.raises(PretrainedError, match=rf"missing \['{name}'\]"):
        load_into_optimizer(tmp_path, data)
    data = rule_file(kind)
    data["state_dict"][name] = data["state_dict"][name].long()
    with pytest.raises(PretrainedError, match=f"weight '{name}' must be a dense floating-point"):
        load_into_optimizer(tmp_path, data)
    data = rule_file(kind)
    data["config"]["unknown_option"] = 1
    with pytest.raises(PretrainedError, match="unexpected keyword argument 'unknown_option'"):
        load_into_optimizer(tmp_path, data)
    data = rule_file(kind)
    del data["config"]["hidden_size"]
    with pytest.raises(PretrainedError, match="missing 1 required keyword-only argument"):
        load_into_optimizer(tmp_path, data)


def test_step_sizes_and_max_t_are_checked(tmp_path):
    data = rule_file("metasgd")
    assert isinstance(load_into_optimizer(tmp_path, data), MetaSGD)
    data["config"] = {"hidden_size": 20}
    with pytest.raises(PretrainedError, match="a metasgd rule has no config or weights"):
        load_into_optimizer(tmp_path, data)
    data = rule_file("turtle")
    data["max_t"] = True
    with pytest.raises(PretrainedError, match="'max_t' must be an int >= 1"):
        load_into_optimizer(tmp_path, data)
    data = rule_file("turtle")
    data["alpha_by_name"] = {"w": torch.tensor([0.1, math.nan])}
    with pytest.raises(PretrainedError, match="the step sizes of 'w' has 1 non-finite"):
        load_into_optimizer(tmp_path, data)
    data["alpha_by_name"] = {"w": torch.ones(4)}
    with pytest.raises(PretrainedError, match="holds 4 step sizes but the summary 'alpha' counts 10"):
        load_into_optimizer(tmp_path, data)
    data["alpha_by_name"] = {"w": torch.ones(10, dtype=torch.long)}
    with pytest.raises(PretrainedError, match="must map parameter names to floating-point"):
        load_into_optimizer(tmp_path, data)
    data = rule_file("metalstm")
    data["alpha_by_name"] = {"w": torch.ones(2)}
    with pytest.raises(PretrainedError, match="a metalstm rule has no step sizes"):
        load_into_optimizer(tmp_path, data)
