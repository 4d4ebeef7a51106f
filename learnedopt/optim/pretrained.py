"""Learned-rule files: what a meta-trained optimizer carries over to a new model.

A meta-training checkpoint (``learnedopt train``, format "learnedopt-checkpoint/1") holds the
whole algorithm: the update rule, but also the learner's initial parameters and per-coordinate
step sizes of that particular learner, which mean nothing for another model. A rule file keeps
only what transfers::

    {"format": "learnedopt-rule/1",
     "kind": "metalstm" | "turtle" | "metasgd",
     "config": rule.config(),              # {} for metasgd
     "state_dict": rule.state_dict(),      # {} for metasgd
     "alpha": {"mean", "median", "std", "min", "max", "numel"},   # turtle / metasgd: summary of
                                           # the learned per-coordinate step sizes, from which a
                                           # new model's coordinates get one scalar (median)
     "alpha_by_name": {name: Tensor},      # optional (turtle / metasgd): the learned step sizes
                                           # of each parameter of the meta-training learner,
                                           # shaped like it, in the order packed into theta
     "max_t": int | None,                  # turtle: largest step index seen in meta-training
     "source": {"algorithm", "iteration", "options", "learner"},   # provenance, informative only
     "checksum": {"algorithm": "sha256", "digest": ...}}   # learnedopt.integrity: of all the rest

The checksum is verified on load (a file whose content changed is refused); a file from before
checksums loads with a note.

:func:`export_rule` writes one from a checkpoint (``alpha_by_name`` when the checkpoint's learner
spec names its parameters: a "module" learner's ``params`` list, or a built-in "mlp" / "conv4",
whose layout is rebuilt); the optimizers' ``from_pretrained`` accept either kind of file, or the
name of a rule file shipped in ``learnedopt/pretrained/``, and map ``alpha_by_name`` onto
parameters given by name (:func:`alpha_for_parameters`).

Nothing is built from a file before :func:`validate_rule` has checked all of it: the config's
options (the ranges of ``MetaLSTMRule.check_config`` / ``TurtleRule.check_config``), then every
weight's name, dtype, shape (against a rule built on the meta device, which allocates nothing)
and finiteness, the step sizes and ``max_t``.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from learnedopt import integrity
from learnedopt.checkpoint import check_integrity, safe_load
from learnedopt.rules import MetaLSTMRule, TurtleRule

RULE_FORMAT = "learnedopt-rule/1"
CHECKPOINT_FORMAT = "learnedopt-checkpoint/1"
KINDS = ("metalstm", "turtle", "metasgd")
# Meta-training algorithms whose learned update transfers, and the rule kind each one learns.
KIND_OF_ALGORITHM = {"metalstm": "metalstm", "metalstm++": "metalstm", "enhanced-lstm": "metalstm",
                     "turtle": "turtle", "metasgd": "metasgd"}
PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
ALPHA_STATISTICS = ("mean", "median")
RULE_CLASSES = {"metalstm": MetaLSTMRule, "turtle": TurtleRule}
# Learner specs (checkpoint["learner"]["name"]) whose parameter names and shapes are known.
BUILTIN_LEARNERS = ("mlp", "conv4")
MODULE_LEARNER = "module"


class PretrainedError(ValueError):
    """A file that is not a usable learnedopt rule or checkpoint (with the reason)."""


# -- reading -------------------------------------------------------------------------------------

def shipped_rules() -> list[str]:
    """Names of the rule files shipped with the package (``from_pretrained(name, ...)``)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def resolve(path_or_name: str | os.PathLike) -> Path:
    path = Path(path_or_name)
    if path.is_file():
        return path
    for candidate in (PRETRAINED_DIR / f"{path_or_name}.pt", PRETRAINED_DIR / str(path_or_name)):
        if candidate.is_file():
            return candidate
    raise PretrainedError(f"{str(path_or_name)!r} is neither a file nor the name of a shipped rule "
                          f"(shipped: {shipped_rules() or 'none'})")


def load_rule(path_or_name: str | os.PathLike) -> dict[str, Any]:
    """Read a rule file or a meta-training checkpoint (converted) and validate it.

    Loads with ``weights_only=True`` (never unpickles code) onto the CPU.
    """
    path = resolve(path_or_name)
    data = safe_load(path, "cpu", PretrainedError, "file")
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == CHECKPOINT_FORMAT:
        check_integrity(data, str(path), PretrainedError, "checkpoint")
        return rule_from_checkpoint(data, str(path))
    if fmt == RULE_FORMAT:
        check_integrity(data, str(path), PretrainedError, "rule file")
        return validate_rule(data, str(path))
    raise PretrainedError(f"{str(path)!r} is not a learnedopt rule file or checkpoint (format "
                          f"{fmt!r}; expected {RULE_FORMAT!r} or {CHECKPOINT_FORMAT!r})")


def validate_rule(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Check a whole rule dict before anything is built from it (see the module docstring);
    raises :class:`PretrainedError` naming the first problem. Returns ``data`` unchanged."""
    missing = [k for k in ("kind", "config", "state_dict") if k not in data]
    if missing:
        raise PretrainedError(f"{source!r} lacks the keys {missing}")
    kind = data["kind"]
    if kind not in KINDS:
        raise PretrainedError(f"{source!r}: unknown rule kind {kind!r} (expected one of {KINDS})")
    if not isinstance(data["config"], dict) or not isinstance(data["state_dict"], dict):
        raise PretrainedError(f"{source!r}: 'config' and 'state_dict' must be dicts")
    if kind in ("turtle", "metasgd"):
        alpha = data.get("alpha")
        if not isinstance(alpha, dict) or not all(
                isinstance(alpha.get(s), (int, float)) and math.isfinite(alpha[s])
                for s in ALPHA_STATISTICS):
            raise PretrainedError(f"{source!r}: a {kind} rule needs 'alpha' with finite "
                                  f"{ALPHA_STATISTICS} of the learned step sizes")
    max_t = data.get("max_t")
    if max_t is not None and (isinstance(max_t, bool) or not isinstance(max_t, int) or max_t < 1):
        raise PretrainedError(f"{source!r}: 'max_t' must be an int >= 1 or None, got {max_t!r}")
    _check_weights(data, source)
    _check_alpha_by_name(data, source)
    return data


def _check_weights(data: dict[str, Any], source: str) -> None:
    """The config's options in range, then each weight as the config implies: same names,
    floating dtype, same shape, all finite (a NaN or Inf weight would make every update NaN)."""
    kind, config, state = data["kind"], data["config"], data["state_dict"]
    if kind == "metasgd":
        if config or state:
            raise PretrainedError(f"{source!r}: a metasgd rule has no config or weights (Meta-SGD "
                                  f"learns only step sizes), got config {config} and weights "
                                  f"{sorted(state)}")
        return
    cls = RULE_CLASSES[kind]
    try:
        cls.check_config(**config)
    except (TypeError, ValueError) as exc:
        raise PretrainedError(f"{source!r}: bad {kind} config {config}: {exc}") from None
    with torch.device("meta"):  # the shapes the config implies, without allocating them
        expected = {name: tuple(t.shape) for name, t in cls(**config).state_dict().items()}
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        raise PretrainedError(f"{source!r}: the {kind} weights do not match its config {config}: "
                              f"missing {missing}, unexpected {unexpected}")
    for name, shape in expected.items():
        t = state[name]
        if not isinstance(t, Tensor) or t.layout != torch.strided or not t.is_floating_point():
            what = (f"a {t.dtype} {t.layout} tensor" if isinstance(t, Tensor)
                    else type(t).__name__)
            raise PretrainedError(f"{source!r}: weight {name!r} must be a dense floating-point "
                                  f"tensor, got {what}")
        if tuple(t.shape) != shape:
            raise PretrainedError(f"{source!r}: the {kind} weights do not match its config "
                                  f"{config}: {name!r} has shape {tuple(t.shape)}, expected {shape}")
        _require_finite(t, f"weight {name!r}", source)


def _check_alpha_by_name(data: dict[str, Any], source: str) -> None:
    by_name = data.get("alpha_by_name")
    if by_name is None:
        return
    if data["kind"] == "metalstm":
        raise PretrainedError(f"{source!r}: a metalstm rule has no step sizes, but the file has "
                              f"'alpha_by_name'")
    if not isinstance(by_name, dict) or not by_name or not all(
            isinstance(k, str) and isinstance(v, Tensor) and v.is_floating_point()
            for k, v in by_name.items()):
        raise PretrainedError(f"{source!r}: 'alpha_by_name' must map parameter names to "
                              f"floating-point tensors")
    for name, values in by_name.items():
        _require_finite(values, f"the step sizes of {name!r}", source)
    numel = sum(v.numel() for v in by_name.values())
    if numel != data["alpha"].get("numel", numel):
        raise PretrainedError(f"{source!r}: 'alpha_by_name' holds {numel} step sizes but the "
                              f"summary 'alpha' counts {data['alpha']['numel']}")


def _require_finite(t: Tensor, what: str, source: str) -> None:
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise PretrainedError(f"{source!r}: {what} has {bad} non-finite (NaN or Inf) entries of "
                              f"{t.numel()}; refusing a rule whose updates would be non-finite")


def build_rule(data: dict[str, Any], source: str = "rule file") -> nn.Module | None:
    """The rule module a validated rule dict (:func:`validate_rule`) describes (None for
    Meta-SGD, which has none)."""
    kind = data["kind"]
    if kind == "metasgd":
        return None
    cls = RULE_CLASSES[kind]
    try:
        rule = cls(**data["config"])
    except (TypeError, ValueError) as exc:
        raise PretrainedError(f"{source!r}: bad {kind} config {data['config']}: {exc}") from exc
    try:
        rule.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as exc:
        raise PretrainedError(f"{source!r}: the {kind} weights do not match its config "
                              f"{data['config']}: {' '.join(str(exc).split())}") from exc
    return rule.requires_grad_(False)


def alpha_init(data: dict[str, Any], statistic: str | float) -> float:
    """The scalar step size new coordinates start at: a statistic of the learned ones, or a number."""
    if isinstance(statistic, str):
        if statistic not in ALPHA_STATISTICS:
            raise ValueError(f"alpha must be a number or one of {ALPHA_STATISTICS}, got {statistic!r}")
        return float(data["alpha"][statistic])
    return float(statistic)


def describe_rule(data: dict[str, Any]) -> str:
    """One line about a validated rule dict (what ``export-rule`` and ``show`` print)."""
    parts = [f"kind={data['kind']}", f"config={data['config']}"]
    if "alpha" in data:
        a = data["alpha"]
        parts.append(f"alpha median={a['median']:.4g} mean={a['mean']:.4g} over {a.get('numel')} coords")
    if data.get("alpha_by_name"):
        parts.append(f"per-parameter alpha for {len(data['alpha_by_name'])} named parameters")
    if data.get("max_t") is not None:
        parts.append(f"max_t={data['max_t']}")
    source = data.get("source") or {}
    if source.get("algorithm"):
        parts.append(f"from {source['algorithm']} (iteration {source.get('iteration')})")
    return "; ".join(parts)


def alpha_for_parameters(data: dict[str, Any], named: Sequence[tuple[str, Tensor]],
                         source: str = "rule file") -> dict[str, Tensor]:
    """The learned step sizes of each parameter given by name, when the rule was meta-trained
    on this model; ``{}`` when it was not (the caller keeps one scalar for every coordinate).

    The rule's ``alpha_by_name`` is used only on an exact match: every parameter of the
    meta-training learner is given, under the same name and with the same shape, and every
    parameter given that requires a gradient is one of them (frozen ones, which meta-training
    leaves out, may be extra). No name in common (another model, or a rule without per-parameter
    step sizes): ``{}``. Anything in between raises :class:`PretrainedError` saying what differs,
    rather than mixing learned and scalar step sizes silently.
    """
    learned = data.get("alpha_by_name")
    if not learned or not named:
        return {}
    given = dict(named)
    common = [name for name in learned if name in given]
    if not common:
        return {}
    missing = [name for name in learned if name not in given]
    extra = [name for name, p in given.items() if name not in learned and p.requires_grad]
    reshaped = {name: (tuple(learned[name].shape), tuple(given[name].shape)) for name in common
                if tuple(learned[name].shape) != tuple(given[name].shape)}
    if missing or extra or reshaped:
        problems = [f"{label} {_first(items)}" for label, items in
                    (("missing", missing), ("not in the rule", extra),
                     ("shape (rule, given) differs for", reshaped)) if items]
        raise PretrainedError(
            f"{source!r} holds the learned step size of each parameter of the model it was "
            f"meta-trained on ({len(learned)} parameters, e.g. {_first(list(learned), 3)}); the "
            f"parameters given match {len(common)} of them but differ: {'; '.join(problems)}. "
            f"Pass that model's named_parameters() to use its own step sizes, or alpha='median' "
            f"(or 'mean', or a number) for one step size for every coordinate")
    return {name: learned[name] for name in common}


def _first(items: Any, count: int = 5) -> str:
    """A short listing for an error message: the first ``count`` entries, and how many more."""
    entries = ([f"{k}: {v}" for k, v in items.items()] if isinstance(items, dict)
               else [str(k) for k in items])
    more = f" and {len(entries) - count} more" if len(entries) > count else ""
    return f"[{', '.join(entries[:count])}{more}]"


# -- checkpoints -> rule files ---------------------------------------------------------------------

def _rule_state(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("rule."):]: v for k, v in state_dict.items() if k.startswith("rule.")}


def _option(options: dict[str, Any], names: tuple[str, ...], default: Any) -> Any:
    for name in names:
        if name in options:
            return options[name]
    return default


def _train_steps(options: dict[str, Any]) -> int | None:
    steps = _option(options, ("inner_steps", "train_inner_steps", "T"), None)
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1 else None


def _alpha_summary(alpha: Tensor) -> dict[str, float]:
    a = alpha.detach().double().reshape(-1)
    return {"mean": a.mean().item(), "median": a.median().item(),
            "std": a.std().item() if a.numel() > 1 else 0.0,
            "min": a.min().item(), "max": a.max().item(), "numel": a.numel()}


def rule_from_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """The transferable part of a meta-training checkpoint, as a rule dict."""
    missing = [k for k in ("algorithm", "options", "state_dict") if k not in checkpoint]
    if missing:
        raise PretrainedError(f"{source!r} lacks the keys {missing}")
    algorithm, options, state = checkpoint["algorithm"], checkpoint["options"], checkpoint["state_dict"]
    if algorithm not in KIND_OF_ALGORITHM:
        raise PretrainedError(
            f"{source!r} was meta-trained with {algorithm!r}, which learns no update rule that "
            f"transfers to a new model (rules come from {sorted(KIND_OF_ALGORITHM)})")
    if not isinstance(options, dict) or not isinstance(state, dict):
        raise PretrainedError(f"{source!r}: 'options' and 'state_dict' must be dicts")
    kind = KIND_OF_ALGORITHM[algorithm]
    rule_state = _rule_state(state)
    data: dict[str, Any] = {"format": RULE_FORMAT, "kind": kind, "config": {}, "state_dict": {},
                            "max_t": None,
                            "source": {"algorithm": algorithm,
                                       "iteration": checkpoint.get("iteration"),
                                       "options": options,
                                       "learner": checkpoint.get("learner")}}
    if kind == "metalstm":
        need = ("w_ih", "w_hh", "b_ih", "b_hh", "w_f", "w_i", "b_f", "b_i")
        absent = [f"rule.{k}" for k in need if k not in rule_state]
        if absent:
            raise PretrainedError(f"{source!r}: the {algorithm} state_dict lacks {absent}")
        data["config"] = {"input_size": int(rule_state["w_ih"].shape[1]),
                          "hidden_size": int(rule_state["w_hh"].shape[1]),
                          "p": float(_option(options, ("preprocess_p", "p"), 10.0)),
                          "log_eps": float(_option(options, ("log_eps",), 0.0)),
                          "strict": bool(_option(options, ("strict",), False))}
    elif kind == "turtle":
        layers = sum(1 for k in rule_state if k.startswith("weights."))
        if layers == 0 or "weights.0" not in rule_state:
            raise PretrainedError(f"{source!r}: the turtle state_dict has no 'rule.weights.*'")
        steps = _train_steps(options)
        # The clamp applies only when T > 1 (the authors' code); "grad_clamp": None means none,
        # and a checkpoint that does not say gets SPEC §3's 10.
        clamp = _option(options, ("grad_clamp",), 10.0)
        if clamp is None or steps is None or steps <= 1:
            clamp = math.inf
        data["config"] = {"hidden_size": int(rule_state["weights.0"].shape[0]),
                          "num_hidden_layers": layers - 1,
                          "use_t": int(rule_state["weights.0"].shape[1]) == 3,
                          "beta": float(_option(options, ("beta",), 0.9)),
                          "grad_clamp": float(clamp)}
        if steps is not None and steps > 1:
            data["max_t"] = steps - 1
    if kind != "metasgd":
        data["state_dict"] = {k: v.detach().clone() for k, v in rule_state.items()}
    if kind in ("turtle", "metasgd"):
        if not isinstance(state.get("alpha"), Tensor):
            raise PretrainedError(f"{source!r}: the {algorithm} state_dict lacks 'alpha'")
        data["alpha"] = _alpha_summary(state["alpha"])
        layout = learner_layout(checkpoint.get("learner"), source)
        if layout is not None:
            data["alpha_by_name"] = _alpha_by_name(state["alpha"], layout, source)
    return validate_rule(data, source)


def learner_layout(spec: Any, source: str = "checkpoint") -> list[tuple[str, tuple[int, ...]]] | None:
    """(name, shape) of each parameter of a checkpoint's learner, in the order they are packed
    into theta: a "module" learner lists them (``spec["params"]``), a built-in one ("mlp",
    "conv4") is rebuilt from its spec. None for a spec that names no layout (another learner, or
    a checkpoint without one): its rule keeps only the summary of the step sizes."""
    if not isinstance(spec, dict):
        return None
    name = spec.get("name")
    if name == MODULE_LEARNER:
        params = spec.get("params")
        if not isinstance(params, (list, tuple)) or not params or not all(
                isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], (list, tuple))
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry[1])
                for entry in params):
            raise PretrainedError(f"{source!r}: its 'module' learner spec must list its parameters "
                                  f"as 'params': [[name, [shape...]], ...]")
        layout = [(entry[0], tuple(entry[1])) for entry in params]
        if len({n for n, _ in layout}) != len(layout):
            raise PretrainedError(f"{source!r}: its 'module' learner spec lists a parameter name "
                                  f"twice")
        return layout
    if name in BUILTIN_LEARNERS:
        from learnedopt.learners import build_learner
        try:
            layout = build_learner(spec).layout
        except (TypeError, ValueError) as exc:
            raise PretrainedError(f"{source!r}: its learner spec {spec} does not build: "
                                  f"{exc}") from None
        return [(n, tuple(layout.shapes[n])) for n in layout.names]
    return None


def _alpha_by_name(alpha: Tensor, layout: list[tuple[str, tuple[int, ...]]],
                   source: str) -> dict[str, Tensor]:
    """The flat learned step sizes split into the learner's parameters (copies, on the CPU)."""
    sizes = [math.prod(shape) for _, shape in layout]
    flat = alpha.detach().reshape(-1)
    if flat.numel() != sum(sizes):
        raise PretrainedError(f"{source!r}: 'alpha' has {flat.numel()} entries but its learner's "
                              f"{len(layout)} parameters have {sum(sizes)} coordinates")
    return {name: part.reshape(shape).clone()
            for (name, shape), part in zip(layout, flat.split(sizes))}


# -- writing ---------------------------------------------------------------------------------------

def save_rule(path: str | os.PathLike, rule: nn.Module | None, alpha: Tensor | None = None,
              max_t: int | None = None, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a rule file from a rule module (None: Meta-SGD) and its learned step sizes."""
    if isinstance(rule, MetaLSTMRule):
        kind = "metalstm"
    elif isinstance(rule, TurtleRule):
        kind = "turtle"
    elif rule is None:
        kind = "metasgd"
    else:
        raise TypeError(f"save_rule: rule must be a MetaLSTMRule, a TurtleRule or None (Meta-SGD), "
                        f"got {type(rule).__name__}")
    data: dict[str, Any] = {
        "format": RULE_FORMAT, "kind": kind,
        "config": rule.config() if rule is not None else {},
        "state_dict": {k: v.detach().cpu().clone() for k, v in rule.state_dict().items()}
        if rule is not None else {},
        "max_t": max_t, "source": source or {}}
    if kind != "metalstm":
        if alpha is None:
            raise ValueError(f"save_rule: a {kind} rule needs the learned step sizes alpha")
        data["alpha"] = _alpha_summary(alpha)
    validate_rule(data, str(path))
    _atomic_save(data, path)
    return data


def export_rule(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike) -> dict[str, Any]:
    """Write the rule file of a meta-training checkpoint; returns what was written."""
    data = load_rule(checkpoint_path)
    _atomic_save(data, out_path)
    return data


def _atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """Serialise in memory, then temp file + fsync + os.replace: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(integrity.seal(obj), buffer)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
