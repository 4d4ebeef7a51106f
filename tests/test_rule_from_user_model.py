"""A rule meta-trained on a user's model exports (``learnedopt export-rule``) and loads into the
drop-in optimizers for that model, each parameter starting at its own learned step sizes,
found by name; any other model keeps one scalar step size; a partial match is an error.

The checkpoints are built by hand in the layout the generic module learner writes:
``checkpoint["learner"] == {"name": "module", "params": [[name, shape], ...]}`` (trainable
parameters, in the order packed into theta) and ``state_dict["alpha"]`` flat over that order."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from learnedopt import cli, reference
from learnedopt.optim import (LSTMOptimizer, MetaSGD, PretrainedError, TurtleOptimizer,
                              export_rule, load_rule)
from learnedopt.optim import __main__ as optim_command
from learnedopt.rules import MetaLSTMRule, TurtleRule


class UserNet(nn.Module):
    """A user's model: conv, batch norm, a frozen embedding of the classes, a linear head and a
    0-dim temperature."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)
        self.norm = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 3)
        self.frozen = nn.Parameter(torch.randn(3), requires_grad=False)
        self.temperature = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        h = torch.relu(self.norm(self.conv(x))).mean((2, 3))
        return self.head(h) / self.temperature + self.frozen


def trainable(model):
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def module_checkpoint(model, algorithm: str, alpha: torch.Tensor, rule=None) -> dict:
    """What meta-training ``algorithm`` on ``model`` with the generic module learner saves."""
    named = trainable(model)
    state = {"theta0": torch.cat([p.detach().reshape(-1) for _, p in named]), "alpha": alpha}
    if rule is not None:
        state.update({f"rule.{k}": v.detach().clone() for k, v in rule.state_dict().items()})
    return {"format": "learnedopt-checkpoint/1", "algorithm": algorithm,
            "options": {"inner_steps": 5}, "iteration": 10, "state_dict": state,
            "learner": {"name": "module", "params": [[n, list(p.shape)] for n, p in named],
                        "class": "UserNet"}}


def learned_alpha(model, seed: int = 0) -> torch.Tensor:
    numel = sum(p.numel() for _, p in trainable(model))
    return 0.05 + 0.1 * torch.rand(numel, generator=torch.Generator().manual_seed(seed))


def by_name(model, alpha):
    """The flat learned alpha split into the model's trainable parameters, by name."""
    named = trainable(model)
    parts = alpha.split([p.numel() for _, p in named])
    return {n: part.view(p.shape) for (n, p), part in zip(named, parts)}


def one_step_gradients(model, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(6, 1, 6, 6, generator=g), torch.randint(0, 3, (6,), generator=g)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss


def exported(tmp_path, checkpoint, name="rule.pt"):
    ckpt = tmp_path / f"ckpt-{name}"
    torch.save(checkpoint, ckpt)
    out = tmp_path / name
    assert cli.main(["export-rule", str(ckpt), str(out)]) == 0
    return out


def test_export_keeps_each_parameters_learned_step_sizes(tmp_path, capsys):
    torch.manual_seed(0)
    model = UserNet()
    alpha = learned_alpha(model)
    out = exported(tmp_path, module_checkpoint(model, "turtle", alpha, TurtleRule()))
    assert "per-parameter alpha for 7 named parameters" in capsys.readouterr().out
    data = torch.load(out, weights_only=True)
    expected = by_name(model, alpha)
    assert list(data["alpha_by_name"]) == list(expected)  # theta's order, frozen left out
    for name, values in expected.items():
        assert torch.equal(data["alpha_by_name"][name], values), name
    assert data["alpha"]["median"] == pytest.approx(alpha.double().median().item())
    assert data["source"]["learner"]["name"] == "module"
    # python -m learnedopt.optim export-rule writes the same rule.
    assert optim_command.main(["export-rule", str(tmp_path / "ckpt-rule.pt"),
                               str(tmp_path / "again.pt")]) == 0
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert all(torch.equal(again["alpha_by_name"][n], v) for n, v in expected.items())


def test_metasgd_from_pretrained_on_its_own_model_takes_each_parameters_alpha(tmp_path):
    torch.manual_seed(0)
    model = UserNet()
    alpha = learned_alpha(model)
    rule = exported(tmp_path, module_checkpoint(model, "metasgd", alpha))
    # Param groups in another order than theta's: the mapping goes by name.
    named = dict(model.named_parameters())
    order = [("head.bias", "temperature", "frozen"),
             ("conv.weight", "conv.bias", "head.weight", "norm.weight", "norm.bias")]
    groups = [{"params": [(n, named[n]) for n in order[0]]},
              {"params": [(n, named[n]) for n in order[1]], "lr": 0.5}]
    lr = {n: (1.0, 0.5)[g] for g, names in enumerate(order) for n in names}
    opt = MetaSGD.from_pretrained(rule, groups)
    learned = by_name(model, alpha)
    for name, p in named.items():
        expected = learned.get(name, torch.full(p.shape, opt.param_groups[0]["alpha"]))
        assert torch.equal(opt.state[p]["alpha"], expected), name
    assert opt.state_dict()["param_groups"][1]["param_names"] == list(order[1])
    # The drop-in step is Meta-SGD's inner update with the learned alpha, per parameter.
    one_step_gradients(model)
    before = {n: p.detach().clone() for n, p in named.items()}
    grads = {n: p.grad.clone() for n, p in named.items() if p.grad is not None}
    opt.step()
    for name, alpha_p in learned.items():
        torch.testing.assert_close(named[name].detach(),
                                   before[name] - lr[name] * alpha_p * grads[name],
                                   rtol=1e-6, atol=1e-8, msg=name)
    assert torch.equal(named["frozen"].detach(), before["frozen"])


def test_turtle_from_pretrained_equals_the_rule_with_the_learned_alpha(tmp_path):
    torch.manual_seed(0)
    model = UserNet()
    alpha = learned_alpha(model)
    rule = TurtleRule(hidden_size=6, num_hidden_layers=2)
    path = tmp_path / "ckpt.pt"
    torch.save(module_checkpoint(model, "turtle", alpha, rule), path)  # a checkpoint loads too
    opt = TurtleOptimizer.from_pretrained(path, model.named_parameters())
    assert opt.param_groups[0]["max_t"] == 4
    named = trainable(model)
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])
    one_step_gradients(model)
    grad = torch.cat([p.grad.reshape(-1) for _, p in named])
    expected, _ = reference.turtle_step(theta, grad, grad, 0, alpha, list(rule.weights),
                                        list(rule.biases), rule.beta, opt.rule.grad_clamp)
    opt.step()
    got = torch.cat([p.detach().reshape(-1) for _, p in named])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls,algorithm", [(TurtleOptimizer, "turtle"), (MetaSGD, "metasgd")])
def test_other_models_and_unnamed_parameters_keep_one_scalar(tmp_path, cls, algorithm):
    torch.manual_seed(0)
    model = UserNet()
    alpha = learned_alpha(model)
    rule = exported(tmp_path, module_checkpoint(model, algorithm, alpha,
                                                TurtleRule() if algorithm == "turtle" else None))
    def start_alphas(opt):
        return torch.cat([opt.state[p]["alpha"].reshape(-1) for p in opt.param_groups[0]["params"]])

    median = alpha.double().median().item()
    for params in (UserNet().parameters(),                              # no names
                   nn.Sequential(nn.Linear(2, 3)).named_parameters()):  # another model
        values = start_alphas(cls.from_pretrained(rule, params))
        assert torch.allclose(values, torch.full_like(values, median))
    # An explicit alpha means one scalar for every coordinate, even on the rule's own model.
    values = start_alphas(cls.from_pretrained(rule, UserNet().named_parameters(), alpha="mean"))
    assert torch.allclose(values, torch.full_like(values, alpha.double().mean().item()))


def test_a_partial_match_is_refused_with_what_differs(tmp_path):
    torch.manual_seed(0)
    model = UserNet()
    rule = exported(tmp_path, module_checkpoint(model, "metasgd", learned_alpha(model)))
    named = trainable(model)
    with pytest.raises(PretrainedError, match=r"match 5 of them.*missing \[head.weight, head.bias\]"):
        MetaSGD.from_pretrained(rule, [(n, p) for n, p in named if not n.startswith("head")])
    wider = UserNet(width=5)  # same names, other shapes
    with pytest.raises(PretrainedError, match=r"shape \(rule, given\) differs for \[conv.weight: "
                                              r"\(\(4, 1, 3, 3\), \(5, 1, 3, 3\)\)"):
        MetaSGD.from_pretrained(rule, wider.named_parameters())
    extra = [*named, ("bonus", nn.Parameter(torch.zeros(2)))]
    with pytest.raises(PretrainedError, match=r"not in the rule \[bonus\].*alpha='median'"):
        MetaSGD.from_pretrained(rule, extra)
    # The fallback the message offers: one step size for every coordinate.
    opt = MetaSGD.from_pretrained(rule, wider.named_parameters(), alpha="median")
    assert opt.param_groups[0]["alpha"] == pytest.approx(load_rule(rule)["alpha"]["median"])


def test_built_in_learner_layouts_export_by_name_too(tmp_path):
    learners = pytest.importorskip("learnedopt.learners")
    algorithms = pytest.importorskip("learnedopt.algorithms")
    torch.manual_seed(0)
    learner = learners.MLP()
    algo = algorithms.build_algorithm("metasgd", learner)
    checkpoint = {"format": "learnedopt-checkpoint/1", "algorithm": "metasgd",
                  "options": algo.options(), "state_dict": algo.state_dict(), "iteration": 0,
                  "learner": learner.config()}
    data = load_rule(exported(tmp_path, checkpoint))
    assert list(data["alpha_by_name"]) == learner.layout.names
    alpha = algo.state_dict()["alpha"]
    for name, values in data["alpha_by_name"].items():
        offset, shape = learner.layout.offsets[name], learner.layout.shapes[name]
        assert torch.equal(values, alpha[offset:offset + math.prod(shape)].view(shape)), name

    class SameAsBuiltInMLP(nn.Module):  # a user module with the built-in MLP's names and shapes
        def __init__(self):
            super().__init__()
            self.hidden0, self.hidden1, self.head = nn.Linear(1, 40), nn.Linear(40, 40), nn.Linear(40, 1)

    user = SameAsBuiltInMLP()
    opt = MetaSGD.from_pretrained(exported(tmp_path, checkpoint, "again.pt"), user.named_parameters())
    assert torch.equal(opt.state[user.hidden1.weight]["alpha"], data["alpha_by_name"]["hidden1.weight"])


def test_checkpoints_without_a_known_layout_keep_the_summary_and_bad_layouts_are_refused(tmp_path):
    torch.manual_seed(0)
    model = UserNet()
    alpha = learned_alpha(model)
    checkpoint = module_checkpoint(model, "metasgd", alpha)
    for learner in (None, {"name": "resnet12"}):  # no spec, or one whose layout is unknown
        checkpoint["learner"] = learner
        data = load_rule(exported(tmp_path, checkpoint))
        assert "alpha_by_name" not in data and data["alpha"]["numel"] == alpha.numel()
    checkpoint = module_checkpoint(model, "metasgd", alpha[:-1])
    torch.save(checkpoint, tmp_path / "short.pt")
    with pytest.raises(PretrainedError, match=rf"'alpha' has {alpha.numel() - 1} entries but its "
                                              rf"learner's 7 parameters have {alpha.numel()}"):
        export_rule(tmp_path / "short.pt", tmp_path / "never.pt")
    assert not (tmp_path / "never.pt").exists()
    checkpoint["learner"] = {"name": "module", "params": [["conv.weight", "4x1x3x3"]]}
    torch.save(checkpoint, tmp_path / "malformed.pt")
    assert cli.main(["export-rule", str(tmp_path / "malformed.pt"), str(tmp_path / "never.pt")]) == 1
    assert not (tmp_path / "never.pt").exists()


def test_lstm_rules_load_for_named_parameters(tmp_path):
    torch.manual_seed(0)
    model = UserNet()
    rule = MetaLSTMRule()
    checkpoint = module_checkpoint(model, "metalstm", learned_alpha(model), rule)
    del checkpoint["state_dict"]["alpha"]
    opt = LSTMOptimizer.from_pretrained(exported(tmp_path, checkpoint), model.named_parameters())
    assert opt.param_groups[0]["param_names"][0] == "frozen"
    assert all(torch.equal(a, b) for a, b in zip(opt.rule.state_dict().values(),
                                                 rule.state_dict().values()))
    loss = one_step_gradients(model)
    opt.step(loss=loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
