"""Any nn.Module as a learner (learnedopt.learners.from_module): the same meta-loss and
meta-gradients as the built-in learners for every algorithm, a module with everything the built-in
learners lack, and the errors for modules that cannot work."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from learnedopt import ops
from learnedopt.algorithms import build_algorithm
from learnedopt.learners import MLP, Conv4, build_learner, from_module
from learnedopt.module_learner import ModuleLearner
from learnedopt.tasks.base import TaskBatch
from learnedopt.tasks.sine import SineTasks
from tests import user_models

EPISODIC = ("maml", "fomaml", "metasgd", "taml", "metalstm", "metalstm++", "enhanced-lstm", "turtle")
TRANSFER = ("finetune", "baseline++", "scratch")
BACKENDS = ("fused", "reference")
# Relative agreement with the built-in learner. float64: rounding only. float32 with the Conv4,
# the head differs in its last bit (the built-in computes it as one batched baddbmm over the
# tasks, nn.Linear as addmm per task; the features agree bitwise) and two second-order inner
# steps amplify that to ~2.5e-6 of the largest gradient entry; the MLP stays within 1e-6.
TOLERANCE = {(torch.float64, "mlp"): 1e-10, (torch.float64, "conv4"): 1e-10,
             (torch.float32, "mlp"): 1e-6, (torch.float32, "conv4"): 5e-6}


def _cast(batch: TaskBatch, dtype) -> TaskBatch:
    return TaskBatch(*(t.to(dtype) if t.is_floating_point() else t
                       for t in (batch.x_support, batch.y_support, batch.x_query, batch.y_query)))


def _sine_batch(dtype, tasks=3):
    return _cast(SineTasks().sample(tasks, torch.Generator().manual_seed(1)), dtype)


def _image_batch(dtype, tasks=2, ways=5, shots=1, queries=2):
    g = torch.Generator().manual_seed(2)
    return TaskBatch(torch.randn(tasks, ways * shots, 1, 28, 28, generator=g, dtype=dtype),
                     torch.arange(ways).repeat(tasks, shots),
                     torch.randn(tasks, ways * queries, 1, 28, 28, generator=g, dtype=dtype),
                     torch.arange(ways).repeat(tasks, queries))


def _meta_gradients(algorithm) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in algorithm.named_parameters() if p.grad is not None}


def _assert_close(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> None:
    scale = a.abs().max().clamp_min(1e-30)
    assert float((a - b).abs().max() / scale) <= tol, f"{what}: {float((a - b).abs().max() / scale):.3g}"


def _pair(name, builtin, user, dtype, **options):
    """The algorithm over the built-in learner and over the user module, with identical
    meta-parameters (the user's are copied from the built-in's)."""
    torch.manual_seed(0)
    a = build_algorithm(name, builtin, **options).to(dtype)
    torch.manual_seed(0)
    b = build_algorithm(name, user, **options).to(dtype)
    b.load_state_dict(a.state_dict())
    return a, b


def _compare_meta_step(a, b, batch, tol):
    loss_a, _ = a.meta_loss(batch)
    loss_a.backward()
    loss_b, _ = b.meta_loss(batch)
    loss_b.backward()
    _assert_close(loss_a.detach(), loss_b.detach(), tol, "meta-loss")
    grads_a, grads_b = _meta_gradients(a), _meta_gradients(b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for key in grads_a:
        _assert_close(grads_a[key], grads_b[key], tol, f"d meta-loss / d {key}")
    for key, value in a.adapt_and_evaluate(batch).items():
        _assert_close(value, b.adapt_and_evaluate(batch)[key], tol, f"meta-test {key}")


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=("f32", "f64"))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", EPISODIC)
def test_user_mlp_matches_builtin(name, backend, dtype):
    user = from_module(user_models.sine_mlp().to(dtype), loss="mse", head="4")
    with ops.use_backend(backend):
        a, b = _pair(name, MLP(), user, dtype, meta_batch_size=3)
        _compare_meta_step(a, b, _sine_batch(dtype), TOLERANCE[dtype, "mlp"])


# float32 with batch statistics, float64 in both batch-norm modes (to keep the test time down).
@pytest.mark.parametrize("dtype, bn_mode", ((torch.float32, "batch"), (torch.float64, "batch"),
                                            (torch.float64, "running")), ids=("f32", "f64", "f64-running"))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", EPISODIC)
def test_user_conv4_matches_builtin(name, backend, dtype, bn_mode):
    user = from_module(user_models.conv4().to(dtype), loss="cross_entropy", head="17",
                       task_family="omniglot")
    builtin = Conv4(ways=5, in_shape=(1, 28, 28), filters=8)
    with ops.use_backend(backend):
        a, b = _pair(name, builtin, user, dtype, meta_batch_size=2, inner_steps=2,
                     test_inner_steps=2, bn_mode=bn_mode)
        _compare_meta_step(a, b, _image_batch(dtype), TOLERANCE[dtype, "conv4"])


@pytest.mark.parametrize("name, learner", [(n, l) for n in TRANSFER for l in ("mlp", "conv4")
                                           if not (n == "baseline++" and l == "mlp")])  # cosine heads classify
def test_transfer_baselines_match_builtin(name, learner):
    dtype = torch.float64
    if learner == "mlp":
        builtin, user, batch = MLP(), from_module(user_models.sine_mlp().double(), loss="mse",
                                                  head="4"), _sine_batch(dtype)
        classes = {}
    else:
        builtin = Conv4(ways=5, in_shape=(1, 28, 28), filters=8)
        user = from_module(user_models.conv4().double(), head="17", task_family="omniglot")
        batch, classes = _image_batch(dtype), ({} if name == "scratch" else {"num_pretrain_classes": 5})
    a, b = _pair(name, builtin, user, dtype, finetune_steps=6, **classes)
    if name != "scratch":
        x, y = batch.x_support.flatten(0, 1), batch.y_support.flatten(0, 1)
        for algorithm in (a, b):
            algorithm.flat_loss(x, y, 5).backward()
        grads_a, grads_b = _meta_gradients(a), _meta_gradients(b)
        for key in grads_a:
            _assert_close(grads_a[key], grads_b[key], 1e-10, f"pre-training d/d {key}")
    for key, value in a.adapt_and_evaluate(batch).items():
        _assert_close(value, b.adapt_and_evaluate(batch)[key], 1e-10, f"meta-test {key}")


# ------------------------------------------------------------------ a module with everything
def _rich_batch(tasks=2, classes=3, shots=2, queries=3):
    g = torch.Generator().manual_seed(3)
    return TaskBatch(torch.randn(tasks, classes * shots, 6, generator=g),
                     torch.arange(classes).repeat(tasks, shots),
                     torch.randn(tasks, classes * queries, 6, generator=g),
                     torch.arange(classes).repeat(tasks, queries))


def _options(name):
    if name in TRANSFER:
        return {"finetune_steps": 4, **({} if name == "scratch" else {"num_pretrain_classes": 3})}
    return {"meta_batch_size": 2, "inner_steps": 2}


def _train_steps(algorithm, batch, steps=3):
    trainable = [p for p in algorithm.parameters() if p.requires_grad]
    if not trainable:  # scratch learns nothing before the test
        return None
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    for _ in range(steps):
        if algorithm.pretrains_flat:
            loss = algorithm.flat_loss(batch.x_support.flatten(0, 1), batch.y_support.flatten(), 3)
        else:
            loss, _ = algorithm.meta_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


@pytest.mark.parametrize("name", EPISODIC + TRANSFER)
def test_rich_module_trains_keeping_frozen_and_tied(name):
    torch.manual_seed(0)
    model = user_models.RichNet()
    frozen_before = model.offset.detach().clone()
    learner = from_module(model, head="out")
    assert "mid2.weight" not in learner.layout.names  # the tied weight is packed once
    assert learner.fixed.names == ["offset", "scale"]
    algorithm = build_algorithm(name, learner, **_options(name))
    theta_before = algorithm.theta0.detach().clone()
    batch = _rich_batch()
    _train_steps(algorithm, batch)
    if name != "scratch":
        assert not torch.equal(algorithm.theta0.detach(), theta_before), "nothing was learned"
    # The frozen parameter is neither meta-trained nor adapted, and the user's module is untouched.
    assert torch.equal(algorithm.learner_fixed.as_dict()["offset"], frozen_before)
    assert torch.equal(model.offset, frozen_before)
    assert model.mid2.weight is model.mid.weight
    metrics = algorithm.adapt_and_evaluate(batch)
    assert set(metrics) == {"loss", "accuracy"} and metrics["loss"].shape == (2,)
    assert torch.isfinite(metrics["loss"]).all()


def test_rich_module_tied_weights_act_as_one():
    """Writing θ into the module and calling it gives the learner's output: the tied layer reads
    the same coordinates as the layer it is tied to."""
    torch.manual_seed(0)
    model = user_models.RichNet().eval()
    learner = from_module(model, head="out").train(False)
    theta = learner.init_parameters() + 0.1 * torch.randn(learner.num_params)
    x = torch.randn(5, 6)
    twin = copy.deepcopy(model)
    twin.bn.train(True).track_running_stats = False  # the learner's default: batch statistics
    learner.assign(theta, twin)
    assert twin.mid2.weight is twin.mid.weight
    torch.testing.assert_close(learner(theta, x), twin(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ("maml", "metasgd", "turtle", "enhanced-lstm"))
def test_rich_module_second_order_differs_and_fused_equals_reference(name):
    batch = _rich_batch()
    results = {}
    for first_order in (False, True):
        for backend in BACKENDS:
            torch.manual_seed(0)
            learner = from_module(user_models.RichNet(), head="out")
            with ops.use_backend(backend):
                algorithm = build_algorithm(name, learner, first_order=first_order,
                                            **_options(name))
                torch.manual_seed(1)  # the same dropout masks for both backends
                loss, _ = algorithm.meta_loss(batch)
                loss.backward()
            results[first_order, backend] = (loss.detach(), _meta_gradients(algorithm))
    for first_order in (False, True):
        (loss_f, grads_f), (loss_r, grads_r) = (results[first_order, b] for b in BACKENDS)
        _assert_close(loss_f, loss_r, 1e-6, "fused vs reference meta-loss")
        for key in grads_f:
            _assert_close(grads_f[key], grads_r[key], 1e-5, f"fused vs reference d/d {key}")
    so, fo = results[False, "fused"][1], results[True, "fused"][1]
    assert not torch.allclose(so["theta0"], fo["theta0"], rtol=1e-3, atol=0), "SO == FO"


def test_dropout_follows_train_and_eval():
    torch.manual_seed(0)
    learner = from_module(user_models.RichNet(dropout=0.5), head="out")
    theta = learner.init_parameters().expand(2, -1)
    x = torch.randn(2, 8, 6)
    torch.manual_seed(5)
    first = learner(theta, x)
    torch.manual_seed(6)
    assert not torch.equal(first, learner(theta, x)), "dropout inactive in train mode"
    torch.manual_seed(5)
    assert torch.equal(first, learner(theta, x)), "dropout not reproducible under the seed"
    learner.train(False)
    assert torch.equal(learner(theta, x), learner(theta, x))
    algorithm = build_algorithm("maml", learner)
    algorithm.train()
    assert learner.training
    algorithm.eval()
    assert not learner.training


def test_fixed_tensors_move_and_checkpoint_with_the_algorithm():
    torch.manual_seed(0)
    learner = from_module(user_models.RichNet(), head="out")
    algorithm = build_algorithm("turtle", learner, meta_batch_size=2)
    state = algorithm.state_dict()
    assert {"learner_fixed.offset", "learner_fixed.scale"} <= set(state)
    algorithm.double()
    assert learner.fixed.as_dict()["scale"].dtype == torch.float64
    metrics = algorithm.adapt_and_evaluate(_cast(_rich_batch(), torch.float64))
    assert metrics["loss"].dtype == torch.float64


def test_batch_norm_running_mode_uses_running_statistics():
    """bn_mode='running': the support passes accumulate per-task statistics that the meta-test
    query uses, which changes the result against batch statistics."""
    torch.manual_seed(0)
    learner = from_module(user_models.conv4(), head="17", task_family="omniglot")
    batch = _image_batch(torch.float32)
    results = []
    for mode in ("batch", "running"):
        torch.manual_seed(0)
        algorithm = build_algorithm("maml", learner, bn_mode=mode, meta_batch_size=2)
        results.append(algorithm.adapt_and_evaluate(batch)["loss"])
    assert not torch.allclose(results[0], results[1])
    stats = learner.new_bn_stats(tasks=2)
    theta = learner.init_parameters().expand(2, -1)
    learner(theta, batch.x_support, stats)
    assert stats.updates == 1 and not torch.equal(stats.mean[0], torch.zeros_like(stats.mean[0]))


@pytest.mark.parametrize("batching", ("vmap", "loop"))
def test_batching_modes_agree(batching):
    torch.manual_seed(0)
    model = user_models.RichNet(dropout=0.0)
    auto = from_module(model, head="out")
    other = from_module(model, head="out", batching=batching)
    theta = (auto.init_parameters() + 0.05 * torch.randn(2, auto.num_params)).requires_grad_()
    x = torch.randn(2, 7, 6)
    out_a, out_b = auto(theta, x), other(theta, x)
    torch.testing.assert_close(out_a, out_b)
    grad_a, = torch.autograd.grad(out_a.square().sum(), theta, create_graph=True)
    grad_b, = torch.autograd.grad(out_b.square().sum(), theta, create_graph=True)
    torch.testing.assert_close(grad_a, grad_b)
    hvp_a, = torch.autograd.grad(grad_a.sum(), theta)
    hvp_b, = torch.autograd.grad(grad_b.sum(), theta)
    torch.testing.assert_close(hvp_a, hvp_b)


def test_custom_loss_and_metric():
    torch.manual_seed(0)
    learner = from_module(user_models.sine_mlp(), loss=user_models.smooth_l1,
                          metrics={"max_error": lambda out, y: (out - y).abs().max()},
                          kind="regression")
    batch = _sine_batch(torch.float32, tasks=2)
    algorithm = build_algorithm("maml", learner, meta_batch_size=2)
    loss, logged = algorithm.meta_loss(batch)
    loss.backward()
    metrics = algorithm.adapt_and_evaluate(batch)
    assert set(metrics) == {"loss", "max_error"} and "max_error" in logged
    theta = algorithm.adapt(batch.x_support, batch.y_support, 1, meta_graph=False)
    with torch.no_grad():
        out = learner(theta, batch.x_query)
    expected = torch.stack([user_models.smooth_l1(out[b], batch.y_query[b]) for b in range(2)])
    torch.testing.assert_close(metrics["loss"], expected)
    assert learner.config()["loss"] == "tests.user_models:smooth_l1"


# ------------------------------------------------------------------ rebuilding
def test_config_rebuilds_from_the_recorded_factory():
    learner = from_module(user_models.conv4(), head="17", task_family="omniglot",
                          factory="tests.user_models:conv4", factory_kwargs={"filters": 8})
    config = learner.config()
    rebuilt = build_learner(config)
    assert isinstance(rebuilt, ModuleLearner) and rebuilt.config() == config
    config["kwargs"] = {"filters": 4}
    with pytest.raises(ValueError, match="differ from the recorded ones"):
        build_learner(config)


def test_object_without_factory_needs_the_model_again():
    learner = from_module(nn.Sequential(nn.Linear(2, 2)), loss="mse")
    with pytest.raises(ValueError, match=r"pass it again \(model=...\)"):
        build_learner(learner.config())
    assert isinstance(build_learner(learner.config(), model=nn.Sequential(nn.Linear(2, 2))),
                      ModuleLearner)


# ------------------------------------------------------------------ modules that cannot work
class _MutatesItsParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def forward(self, x):
        with torch.no_grad():
            self.layer.bias.add_(1.0)
        return self.layer(x)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def forward(self, x):
        out = self.layer(x)
        return out * 2 if out.sum().item() > 0 else out


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no trainable parameter"):
        from_module(nn.ReLU())
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        from_module(frozen)
    with pytest.raises(ValueError, match="float32 or float64"):
        from_module(nn.Linear(2, 2).half())
    mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="mix dtypes"):
        from_module(mixed)
    with pytest.raises(ValueError, match="must be an nn.Linear"):
        from_module(user_models.conv4(), head="16")
    with pytest.raises(ValueError, match="no submodule"):
        from_module(user_models.conv4(), head="classifier")
    with pytest.raises(TypeError, match="wrap it as a learner"):
        build_algorithm("maml", user_models.sine_mlp())
    with pytest.raises(ValueError, match="final nn.Linear"):
        build_algorithm("finetune", from_module(user_models.sine_mlp(), loss="mse"))
    with pytest.raises(ValueError, match="batching must be one of"):
        from_module(user_models.sine_mlp(), batching="grouped")
    with pytest.raises(ValueError, match="has no attribute"):
        from_module(user_models.sine_mlp(), factory="tests.user_models:no_such_model")


def test_in_place_parameter_mutation_is_refused():
    learner = from_module(_MutatesItsParameter(), loss="mse")
    theta = learner.init_parameters().expand(2, -1).clone()
    with pytest.raises(ValueError, match="modified its parameters in place"):
        learner(theta, torch.randn(2, 3, 2))


def test_module_that_cannot_be_vmapped_says_use_loop():
    learner = from_module(_DataDependent(), loss="mse")
    theta = learner.init_parameters().expand(2, -1)
    with pytest.raises(RuntimeError, match="batching='loop'"):
        learner(theta, torch.randn(2, 3, 2))
    looped = from_module(_DataDependent(), loss="mse", batching="loop")
    assert looped(theta, torch.randn(2, 3, 2)).shape == (2, 3, 2)
