"""Every algorithm behind the MetaAlgorithm interface: runs, learns, and computes the right
meta-gradients (first vs second order, fused vs reference, Meta-SGD's alpha, TAML's penalty)."""

import json

import pytest
import torch

from learnedopt import ops
from learnedopt.algorithms import ALGORITHMS, build_algorithm
from learnedopt.algorithms.taml import theil_index
from learnedopt.learners import MLP, Conv4
from learnedopt.tasks.base import TaskBatch
from learnedopt.tasks.sine import SineTasks

EPISODIC = [name for name, cls in ALGORITHMS.items() if not cls.pretrains_flat]
TRANSFER = [name for name, cls in ALGORITHMS.items() if cls.pretrains_flat]
RULE_OPS = {"metalstm": "meta_lstm_step", "metalstm++": "meta_lstm_step",
            "enhanced-lstm": "meta_lstm_step", "turtle": "turtle_step"}
SMALL_MLP = (1, 20, 20, 1)


@pytest.fixture(autouse=True)
def _single_thread():
    # Other work shares the machine's cores; one thread also makes the runs reproducible.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sine_batch(tasks=2, seed=0, k=5):
    return SineTasks(k_shot=k, k_query=k).sample(tasks, torch.Generator().manual_seed(seed))


def image_batch(tasks=2, ways=5, shots=1, queries=2, seed=0):
    g = torch.Generator().manual_seed(seed)

    def labels(per_class):
        return torch.arange(ways).repeat_interleave(per_class).repeat(tasks, 1)

    # Each class has its own mean image, so the task is learnable and gradients are informative.
    means = torch.randn(tasks, ways, 1, 28, 28, generator=g)
    ys, yq = labels(shots), labels(queries)
    xs = means[torch.arange(tasks)[:, None], ys] + 0.3 * torch.randn(tasks, ways * shots, 1, 28, 28, generator=g)
    xq = means[torch.arange(tasks)[:, None], yq] + 0.3 * torch.randn(tasks, ways * queries, 1, 28, 28, generator=g)
    return TaskBatch(xs, ys, xq, yq)


def tiny_conv4(ways=5):
    return Conv4(ways=ways, in_shape=(1, 28, 28), filters=4)


def build(name, learner, seed=0, **options):
    torch.manual_seed(seed)
    if name in ("finetune", "baseline++") and learner.kind == "classification":
        options.setdefault("num_pretrain_classes", 12)
    return build_algorithm(name, learner, **options)


def meta_gradients(algorithm, batch):
    algorithm.zero_grad(set_to_none=True)
    loss, _ = algorithm.meta_loss(batch)
    loss.backward()
    return {name: (p.grad.clone() if p.grad is not None else None)
            for name, p in algorithm.named_parameters()}


# ------------------------------------------------------------------------- runs on both tasks
@pytest.mark.parametrize("name", EPISODIC)
@pytest.mark.parametrize("task", ["sine", "images"])
def test_episodic_algorithm_runs(name, task):
    if task == "sine":
        learner, batch = MLP(SMALL_MLP), sine_batch()
    else:
        learner, batch = tiny_conv4(), image_batch()
    algorithm = build(name, learner, inner_steps=2, test_inner_steps=3)
    loss, logged = algorithm.meta_loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert "loss" in logged and (task == "sine" or 0.0 <= logged["accuracy"] <= 1.0)
    loss.backward()
    algorithm.clip_meta_gradients()
    grads = [p.grad for p in algorithm.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert algorithm.theta0.grad.abs().sum() > 0
    result = algorithm.adapt_and_evaluate(batch)
    assert result["loss"].shape == (batch.num_tasks,) and torch.isfinite(result["loss"]).all()
    if task == "images":
        assert ((result["accuracy"] >= 0) & (result["accuracy"] <= 1)).all()
    json.dumps(algorithm.options())


@pytest.mark.parametrize("name", TRANSFER)
@pytest.mark.parametrize("task", ["sine", "images"])
def test_transfer_baseline_runs(name, task):
    if task == "sine" and name == "baseline++":
        with pytest.raises(ValueError, match="classification"):
            build(name, MLP(SMALL_MLP))
        return
    if task == "sine":
        learner, batch = MLP(SMALL_MLP), sine_batch()
        x, y, labels = SineTasks().sample_flat(16, torch.Generator().manual_seed(0))
    else:
        learner, batch = tiny_conv4(), image_batch()
        x, y, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 12, (16,)), 12
    algorithm = build(name, learner, finetune_steps=10, finetune_eval_every=5)
    before = algorithm.theta0.detach().clone()
    optimizer = torch.optim.Adam(algorithm.parameters(), lr=0.01)
    loss = algorithm.flat_loss(x, y, labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    moved = not torch.equal(before, algorithm.theta0.detach())
    assert moved == (name != "scratch")  # TrainFromScratch learns nothing before the test
    result = algorithm.adapt_and_evaluate(batch)
    assert result["loss"].shape == (2,) and torch.isfinite(result["loss"]).all()
    again = algorithm.adapt_and_evaluate(batch)
    torch.testing.assert_close(again["loss"], result["loss"])  # seeded heads and minibatches
    with pytest.raises(TypeError, match="flat_loss"):
        algorithm.meta_loss(batch)


def test_finetune_pretrains_then_fits_a_new_head_on_the_support_set():
    # 8 filters: the 4-filter test learner has only 4 features, too few to separate 5 classes.
    algorithm = build("finetune", Conv4(5, (1, 28, 28), 8), num_pretrain_classes=12,
                      finetune_steps=100, finetune_lr=0.1)
    g = torch.Generator().manual_seed(3)
    class_means = torch.randn(12, 1, 28, 28, generator=g)
    optimizer = torch.optim.Adam(algorithm.parameters(), lr=0.01)
    flat_losses = []
    for _ in range(30):
        y = torch.randint(0, 12, (16,), generator=g)
        x = class_means[y] + 0.3 * torch.randn(16, 1, 28, 28, generator=g)
        loss = algorithm.flat_loss(x, y, 12)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        flat_losses.append(loss.item())
    assert sum(flat_losses[-5:]) < 0.8 * sum(flat_losses[:5])
    assert algorithm.bn_mean0.abs().sum() > 0  # pre-training accumulated running statistics
    batch = image_batch(shots=3)
    support_as_query = TaskBatch(batch.x_support, batch.y_support, batch.x_support, batch.y_support)
    untrained = algorithm.adapt_and_evaluate(support_as_query, steps=0)["loss"]
    trained = algorithm.adapt_and_evaluate(support_as_query)["loss"]
    assert (trained < untrained).all() and trained.mean() < 0.7 * untrained.mean(), (trained, untrained)
    with pytest.raises(ValueError, match="num_pretrain_classes=30"):
        algorithm.flat_loss(torch.randn(4, 1, 28, 28), torch.randint(0, 30, (4,)), 30)


# ----------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("name", EPISODIC)
def test_sine_meta_loss_goes_down(name):
    """Meta-train briefly (outer lr 0.01 to be quick); the query loss after adaptation on fixed
    validation tasks, averaged over the first and the last evaluations, must drop clearly."""
    sampler = SineTasks(k_shot=5, k_query=5)
    validation = next(sampler.fixed_tasks("val", 8, 8, seed=0))
    algorithm = build(name, MLP(SMALL_MLP), meta_batch_size=4, outer_lr=0.01)
    optimizer = torch.optim.Adam(algorithm.parameters(), lr=algorithm.outer_lr)
    generator = torch.Generator().manual_seed(1)
    iterations, window = 40, 4
    history = []
    for it in range(iterations + 1):
        if it < window or it > iterations - window:
            history.append(algorithm.adapt_and_evaluate(validation)["loss"].mean().item())
        if it == iterations:
            break
        loss, _ = algorithm.meta_loss(sampler.sample(algorithm.meta_batch_size, generator))
        optimizer.zero_grad()
        loss.backward()
        algorithm.clip_meta_gradients()
        optimizer.step()
    first, last = sum(history[:window]) / window, sum(history[-window:]) / window
    assert last < 0.92 * first, (first, last)


# --------------------------------------------------------------------------- meta-gradients
def _assert_grads_close(a, b):
    assert a.keys() == b.keys()
    for name in a:
        if a[name] is None or b[name] is None:
            assert a[name] is None and b[name] is None, name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", sorted(RULE_OPS))
@pytest.mark.parametrize("task", ["sine", "images"])
def test_fused_and_reference_backends_give_the_same_meta_gradients(name, task):
    op = RULE_OPS[name]
    if not ops.available("cpu", op):
        pytest.skip(f"no fused CPU kernel for {op} in this build: 'auto' would also run the reference")
    learner, batch = (MLP(SMALL_MLP), sine_batch()) if task == "sine" else (tiny_conv4(), image_batch())
    with ops.use_backend("reference"):
        reference = meta_gradients(build(name, learner, inner_steps=3), batch)
    with ops.use_backend("fused"):
        fused = meta_gradients(build(name, learner, inner_steps=3), batch)
    _assert_grads_close(fused, reference)


def _max_difference(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a if a[k] is not None)


@pytest.mark.parametrize("name", ["maml", "turtle", "enhanced-lstm", "metalstm"])
def test_first_and_second_order_differ_exactly_when_they_should(name):
    batch = sine_batch()
    so = meta_gradients(build(name, MLP(SMALL_MLP), inner_steps=2, first_order=False), batch)
    fo = meta_gradients(build(name, MLP(SMALL_MLP), inner_steps=2, first_order=True), batch)
    assert _max_difference(so, fo) > 1e-6
    # With no inner step there is no support gradient, so nothing can differ.
    so0 = meta_gradients(build(name, MLP(SMALL_MLP), inner_steps=0, first_order=False), batch)
    fo0 = meta_gradients(build(name, MLP(SMALL_MLP), inner_steps=0, first_order=True), batch)
    _assert_grads_close(so0, fo0)


@pytest.mark.parametrize("name", ["maml", "metasgd", "metalstm++", "turtle"])
@pytest.mark.parametrize("task", ["sine", "images"])
def test_a_meta_batch_equals_its_tasks_one_by_one(name, task):
    """The batched inner loop gives each task exactly what adapting it alone gives."""
    learner, batch = (MLP(SMALL_MLP), sine_batch(tasks=3)) if task == "sine" else \
        (tiny_conv4(), image_batch(tasks=3))
    algorithm = build(name, learner, inner_steps=2)
    together = meta_gradients(algorithm, batch)
    alone = [meta_gradients(algorithm, batch.task(b)) for b in range(3)]
    mean = {key: sum(g[key] for g in alone) / 3 for key in together}
    _assert_grads_close(together, mean)
    per_task = algorithm.adapt_and_evaluate(batch)["loss"]
    torch.testing.assert_close(per_task, torch.cat([algorithm.adapt_and_evaluate(batch.task(b))["loss"]
                                                    for b in range(3)]), rtol=1e-5, atol=1e-6)


def test_maml_second_order_meta_gradient_matches_torch_func():
    """An independent formulation: theta' = theta - a * grad L_S(theta) with torch.func."""
    algorithm = build("maml", MLP(SMALL_MLP), inner_steps=1, inner_lr=0.05)
    batch = sine_batch(tasks=1)
    ours = meta_gradients(algorithm, batch)["theta0"]
    learner, lr = algorithm.learner, 0.05

    def support_loss(theta):
        return learner.loss(learner(theta, batch.x_support[0]), batch.y_support[0])

    def query_after_step(theta):
        adapted = theta - lr * torch.func.grad(support_loss)(theta)
        return learner.loss(learner(adapted, batch.x_query[0]), batch.y_query[0])

    expected = torch.func.grad(query_after_step)(algorithm.theta0.detach())
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


def test_metasgd_alpha_gradient_and_learning():
    """For one step, dL_Q/d alpha = -g_S ⊙ grad L_Q(theta'); and training moves alpha."""
    algorithm = build("metasgd", MLP(SMALL_MLP))
    assert algorithm.alpha.shape == algorithm.theta0.shape
    assert 0.005 <= algorithm.alpha.min() and algorithm.alpha.max() <= 0.1
    batch = sine_batch(tasks=1)
    learner = algorithm.learner
    theta = algorithm.theta0.detach().requires_grad_()
    g_support, = torch.autograd.grad(learner.loss(learner(theta, batch.x_support[0]),
                                                  batch.y_support[0]), theta)
    adapted = (theta - algorithm.alpha.detach() * g_support).detach().requires_grad_()
    g_query, = torch.autograd.grad(learner.loss(learner(adapted, batch.x_query[0]),
                                                batch.y_query[0]), adapted)
    grads = meta_gradients(algorithm, batch)
    torch.testing.assert_close(grads["alpha"], -g_support * g_query, rtol=1e-5, atol=1e-8)

    start = algorithm.alpha.detach().clone()
    optimizer = torch.optim.Adam(algorithm.parameters(), lr=1e-3)
    for seed in range(5):
        loss, _ = algorithm.meta_loss(sine_batch(tasks=4, seed=seed))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    change = (algorithm.alpha.detach() - start).abs()
    assert change.max() > 1e-3 and change.min() < change.max()  # per coordinate, not one scalar


def test_taml_theil_penalty():
    assert theil_index(torch.full((4,), 2.3)).abs().item() < 1e-7
    unequal = theil_index(torch.tensor([0.5, 1.0, 4.0]))
    assert unequal > 0
    assert theil_index(torch.tensor([0.0, 1.0, 1.0])).isfinite()
    batch = sine_batch(tasks=3)
    maml_loss, _ = build("maml", MLP(SMALL_MLP), seed=5).meta_loss(batch)
    taml = build("taml", MLP(SMALL_MLP), seed=5, penalty_weight=0.5)
    taml_loss, logged = taml.meta_loss(batch)
    torch.testing.assert_close(taml_loss, maml_loss + 0.5 * logged["penalty"])
    assert logged["penalty"] > 0
    entropy = build("taml", tiny_conv4(), penalty="entropy")
    loss, logged = entropy.meta_loss(image_batch())
    loss.backward()
    assert torch.isfinite(entropy.theta0.grad).all() and "penalty" in logged
    with pytest.raises(ValueError, match="classification"):
        build("taml", MLP(SMALL_MLP), penalty="entropy")


# --------------------------------------------------------------------- paper details, options
def test_layout_and_defaults_follow_the_papers():
    learner = MLP()
    keys = {name: set(build(name, learner).state_dict()) for name in ALGORITHMS if name != "baseline++"}
    assert keys["maml"] == {"theta0"}
    assert keys["metasgd"] == {"theta0", "alpha"}
    assert {"theta0", "alpha", "rule.weights.0"} <= keys["turtle"]
    assert {"theta0", "rule.w_ih", "rule.w_f", "rule.b_i"} <= keys["metalstm"]
    lstm, enhanced, turtle = build("metalstm", learner), build("enhanced-lstm", learner), build("turtle", learner)
    assert lstm.rule.input_size == 4 and lstm.first_order and lstm.meta_batch_size == 1
    assert enhanced.rule.input_size == 1 and not enhanced.first_order
    assert enhanced.options()["inner_steps"] == 8
    assert build("metalstm++", learner).meta_batch_size == 4
    assert turtle.options()["inner_steps"] == 5 and turtle.meta_batch_size == 2 and not turtle.first_order
    assert 0 <= turtle.alpha.min() and turtle.alpha.max() <= 1
    five, twenty = build("maml", Conv4(5, (1, 28, 28), 4)), build("maml", Conv4(20, (1, 28, 28), 4))
    assert (five.options()["inner_lr"], five.options()["inner_steps"], five.meta_batch_size) == (0.4, 1, 32)
    assert (twenty.options()["inner_lr"], twenty.options()["inner_steps"], twenty.meta_batch_size) == (0.1, 5, 16)
    assert five.options()["test_inner_steps"] == 10


def test_metalstm_clips_the_meta_gradient_norm():
    algorithm = build("metalstm", MLP(SMALL_MLP), inner_steps=2)
    loss, _ = algorithm.meta_loss(sine_batch())
    (loss * 1e3).backward()
    algorithm.clip_meta_gradients()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in algorithm.parameters()]))
    assert norm <= 0.25 + 1e-5


def test_options_are_checked_and_converted():
    learner = MLP(SMALL_MLP)
    with pytest.raises(ValueError, match="unknown algorithm"):
        build_algorithm("reptile", learner)
    with pytest.raises(ValueError, match="unknown option"):
        build_algorithm("maml", learner, inner_rate=0.1)
    with pytest.raises(ValueError, match="inner_steps"):
        build_algorithm("maml", learner, inner_steps=-1)
    with pytest.raises(ValueError, match="bn_mode"):
        build_algorithm("maml", learner, bn_mode="frozen")
    converted = build_algorithm("turtle", learner, inner_steps="3", first_order="true", beta="0.5")
    assert converted.options()["inner_steps"] == 3 and converted.first_order
    assert converted.options()["beta"] == 0.5
    with pytest.raises(ValueError, match="true/false"):
        build_algorithm("maml", learner, first_order="maybe")


def test_bad_batches_raise_clear_errors():
    algorithm = build("maml", tiny_conv4(), inner_steps=1)
    batch = image_batch()
    bad = TaskBatch(batch.x_support, batch.y_support.float(), batch.x_query, batch.y_query)
    with pytest.raises(ValueError, match="int64"):
        algorithm.meta_loss(bad)
    with pytest.raises(ValueError, match="regression"):
        build("maml", MLP(SMALL_MLP)).meta_loss(TaskBatch(*(t[:, :, 0] for t in (
            sine_batch().x_support, sine_batch().y_support, sine_batch().x_query, sine_batch().y_query))))


def test_running_batch_norm_mode_evaluates_with_support_statistics():
    batch = image_batch(queries=3)
    results = {}
    for mode in ("batch", "running"):
        algorithm = build("metalstm", tiny_conv4(), bn_mode=mode, inner_steps=2)
        results[mode] = algorithm.adapt_and_evaluate(batch)["loss"]
        assert torch.isfinite(results[mode]).all()
    assert not torch.allclose(results["batch"], results["running"])


def test_gate_trace_and_predict_adapted():
    algorithm = build("metalstm", MLP(SMALL_MLP), inner_steps=4, test_inner_steps=4)
    trace = algorithm.gate_trace(sine_batch(tasks=3), coordinates=6)
    assert trace["input_gate"].shape == (3, 4, 6) and trace["forget_gate_mean"].shape == (3, 4)
    for key in ("input_gate", "forget_gate", "input_gate_mean", "forget_gate_mean"):
        assert ((trace[key] > 0) & (trace[key] < 1)).all()
    assert trace["forget_gate_mean"].mean() > 0.9  # b_F ~ U(4, 6): the forget gate starts near 1

    maml = build("maml", MLP(SMALL_MLP), inner_lr=0.01)
    batch, grid = sine_batch(tasks=2), torch.linspace(-5, 5, 11).unsqueeze(1)
    before, after = maml.predict_adapted(batch, grid, steps=1)
    assert before.shape == after.shape == (2, 11, 1)
    learner, theta = maml.learner, maml.theta0.detach().requires_grad_()
    g, = torch.autograd.grad(learner.loss(learner(theta, batch.x_support[1]), batch.y_support[1]), theta)
    torch.testing.assert_close(after[1], learner(theta.detach() - 0.01 * g, grid))
    torch.testing.assert_close(before[0], learner(theta.detach(), grid))


def test_turtle_rule_passes_its_layers_in_order_after_load_and_replacement():
    """TurtleRule hands the op its weights from the ParameterList's dict (rules._in_order), not
    by iterating the list: the order must stay the list's through load_state_dict, a dtype move
    and the replacement of an entry."""
    from learnedopt.rules import TurtleRule, _in_order
    rule = TurtleRule(hidden_size=4, num_hidden_layers=3)
    rule.load_state_dict(TurtleRule(hidden_size=4, num_hidden_layers=3).state_dict())
    rule = rule.double()
    rule.weights[1] = torch.nn.Parameter(torch.zeros_like(rule.weights[1]))
    for plist in (rule.weights, rule.biases):
        assert [id(p) for p in _in_order(plist)] == [id(p) for p in plist]
