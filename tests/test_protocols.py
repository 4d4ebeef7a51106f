"""The named Omniglot protocols of the CLI (learnedopt/protocols.py, 'train --protocol',
'protocol list|show'), the Omniglot task flags, 'plot ways' over folders and globs, and the one
format every command prints metrics in."""

from __future__ import annotations

import json

import pytest
import torch

from learnedopt import cli, experiment, protocols
from learnedopt.cli import main
from learnedopt.evaluate import format_value
from learnedopt.train import TrainConfig
from tests.fewshot_data import tiny_omniglot  # noqa: F401 (fixture)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def train_config(argv: list[str]):
    args = cli.build_parser().parse_args(["train", *argv])
    return cli._train_config(args)


def test_stress_test_protocol_fills_task_options_and_run(capsys):
    config = train_config(["--protocol", "stress-test", "--algorithm", "metalstm++", "--ways",
                           "50", "--data-root", "DATA", "--out", "runs/x"])
    assert config.task == {"name": "omniglot", "data_root": "DATA", "ways": 50, "shots": 1,
                           "queries": 1, "split": "maml", "image_size": 28, "rotations": True}
    assert config.options == protocols.PROTOCOLS["stress-test"].options["metalstm++"]
    assert config.options["meta_batch_size"] == 4 and config.options["inner_steps"] == 8
    assert (config.iterations, config.val_every, config.val_tasks) == (20000, 250, 300)
    assert config.protocol == "stress-test"  # recorded in the run's config.json
    assert TrainConfig.from_dict(config.to_dict()).protocol == "stress-test"
    # The paper's figure has 40 and 60 ways, not 50: allowed, with a note.
    assert "--ways 50 is not one of the stress-test protocol's ways" in capsys.readouterr().err
    train_config(["--protocol", "stress-test", "--algorithm", "maml", "--ways", "40",
                  "--data-root", "DATA", "--out", "runs/x"])
    assert capsys.readouterr().err == ""


def test_flags_override_the_protocol_and_queries_follow_shots(capsys):
    config = train_config(["--protocol", "omniglot20", "--algorithm", "maml", "--shots", "5",
                           "--inner-steps", "3", "--opt", "inner_lr=0.05", "--iterations", "7",
                           "--val-tasks", "9", "--data-root", "D", "--out", "o"])
    assert config.task["ways"] == 20 and config.task["shots"] == config.task["queries"] == 5
    assert config.options["inner_steps"] == 3 and config.options["inner_lr"] == 0.05
    assert config.options["first_order"] is True and config.options["test_inner_steps"] == 8
    assert (config.iterations, config.val_every, config.val_tasks) == (7, 250, 9)
    # Outside the protocol's settings: allowed, with a note naming what it tests.
    train_config(["--protocol", "omniglot20", "--algorithm", "turtle", "--ways", "30",
                  "--data-root", "D", "--out", "o"])
    err = capsys.readouterr().err
    assert "--ways 30 is not one of the omniglot20 protocol's ways [20]" in err
    assert "no settings for 'turtle'" in err


def test_without_a_protocol_the_old_defaults_hold():
    config = train_config(["--algorithm", "maml", "--task", "sine", "--out", "o"])
    assert (config.iterations, config.val_every, config.val_tasks) == (20000, 500, 100)
    assert config.options == {} and config.protocol is None


def test_lake_protocol_and_the_omniglot_flags():
    config = train_config(["--protocol", "lake", "--algorithm", "maml", "--data-root", "D",
                           "--out", "o"])
    assert config.task["split"] == "lake" and config.task["within_alphabet"] is True
    assert config.task["rotations"] is False and config.task["ways"] == 20
    flags = train_config(["--algorithm", "maml", "--task", "omniglot", "--data-root", "D",
                          "--split", "lake", "--within-alphabet", "--no-rotations",
                          "--val-alphabets", "Greek,Latin", "--out", "o"])
    assert flags.task["within_alphabet"] is True and flags.task["rotations"] is False
    assert flags.task["val_alphabets"] == ["Greek", "Latin"]
    assert train_config(["--algorithm", "maml", "--task", "omniglot", "--data-root", "D",
                         "--split", "lake", "--val-alphabets", "none", "--out", "o"]
                        ).task["val_alphabets"] == []


@pytest.mark.parametrize("argv,message", [
    (["--task", "sine", "--within-alphabet"], "--within-alphabet do not apply to --task sine"),
    (["--task", "omniglot", "--data-root", "D", "--opt", "within_alphabet=true"],
     "use --within-alphabet"),
    (["--task", "omniglot", "--data-root", "D", "--val-alphabets", "Greek"],
     "--val-alphabets applies to --split lake only"),
    (["--task", "images", "--data-root", "D", "--no-rotations"], "apply to --task omniglot only"),
    (["--protocol", "stress-test", "--task", "sine"], "does not combine with --task sine"),
    (["--protocol", "nope", "--data-root", "D"], "unknown protocol 'nope'"),
])
def test_bad_protocol_and_flag_combinations_are_named(capsys, tmp_path, argv, message):
    assert main(["train", "--algorithm", "maml", *argv, "--out", str(tmp_path / "r")]) == 1
    assert message in capsys.readouterr().err


def test_protocol_list_and_show(capsys):
    assert main(["protocol", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in protocols.PROTOCOLS)
    assert main(["protocol", "show", "stress-test"]) == 0
    shown = capsys.readouterr().out
    assert "20, 40, 60, 80, 100, 150, 175, 200" in shown
    for algorithm in protocols.STRESS_TEST_ALGORITHMS:
        assert f"    {algorithm} " in shown
    assert "penalty_weight=0.05" in shown and "meta-test: 300 tasks" in shown
    assert main(["protocol", "show", "lake"]) == 0
    assert "Bengali, Cyrillic, Futurama, Hebrew, Korean" in capsys.readouterr().out
    assert main(["protocol", "show", "nope"]) == 1
    assert "unknown protocol 'nope'" in capsys.readouterr().err


def test_protocol_options_build_the_five_algorithms(tiny_omniglot, tmp_path):  # noqa: F811
    """Every option set is accepted by its algorithm (a misspelt key would be refused here), and
    build_sampler passes the Omniglot-only keys instead of dropping them."""
    protocol = protocols.get_protocol("stress-test")
    spec = {"name": "omniglot", "data_root": str(tiny_omniglot["zips"]),
            "cache_dir": str(tmp_path), **protocol.task_spec(5, 1),
            "split": "lake", "val_alphabets": ["Alpha1"], "within_alphabet": True,
            "rotations": False}
    sampler = experiment.build_sampler(spec)
    assert sampler.within_alphabet is True and sampler.rotations is False
    assert sampler.config()["val_alphabets"] == ["Alpha1"]
    learner = experiment.build_learner(experiment.default_learner_spec(spec, sampler), sampler)
    batch = sampler.sample(1, torch.Generator().manual_seed(0))
    for algorithm in protocols.STRESS_TEST_ALGORITHMS:
        built = experiment.build_algorithm(algorithm, learner,
                                           protocol.algorithm_options(algorithm), sampler)
        assert built.meta_batch_size == protocol.options[algorithm]["meta_batch_size"]
        assert torch.isfinite(built.adapt_and_evaluate(batch, 1)["accuracy"]).all()
    with pytest.raises(ValueError, match="does not take within_alphabet"):
        experiment.build_sampler({"name": "images", "data_root": str(tmp_path),
                                  "within_alphabet": True})


def _result(tmp_path, name, algorithm, ways, accuracy, shots=1):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "format": "learnedopt-result/1", "algorithm": algorithm, "metric": "accuracy",
        "mean": accuracy, "ci95": 0.02, "protocol": {"ways": ways, "shots": shots}}))
    return path


def test_plot_ways_reads_folders_and_recursive_globs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for algorithm in ("maml", "metalstm++"):
        for ways, accuracy in ((20, 0.8), (50, 0.6), (100, 0.4)):
            _result(tmp_path, f"results/{algorithm}/{ways}w.json", algorithm, ways, accuracy)
    out = tmp_path / "ways.png"
    assert main(["plot", "ways", str(tmp_path / "results"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    out.unlink()
    assert main(["plot", "ways", str(tmp_path / "results" / "**" / "*.json"), "--out",
                 str(out)]) == 0
    assert out.is_file()
    (tmp_path / "empty").mkdir()
    assert main(["plot", "ways", str(tmp_path / "empty"), "--out", str(out)]) == 1
    assert "without result files" in capsys.readouterr().err
    assert main(["plot", "ways", str(tmp_path / "nothing-*.json"), "--out", str(out)]) == 1
    assert "matches no files" in capsys.readouterr().err
    _result(tmp_path, "results/copy/20w.json", "maml", 20, 0.7)
    assert main(["plot", "ways", str(tmp_path / "results"), "--out", str(out)]) == 1
    assert "two results for maml 1-shot at 20 ways" in capsys.readouterr().err


def test_plot_ways_draws_one_line_per_algorithm_with_ticks_at_the_ways(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from learnedopt import plots
    drawn = {}

    def keep(fig, out):
        ax = fig.axes[0]
        drawn["ticks"] = [t.get_text() for t in ax.get_xticklabels()]
        drawn["labels"] = [t.get_text() for t in ax.get_legend().get_texts()]
        drawn["errorbars"] = len(ax.containers)
        return out

    monkeypatch.setattr(plots, "_save", keep)
    files = [_result(tmp_path, f"{a}-{w}.json", a, w, 0.5)
             for a in ("maml", "metasgd") for w in (20, 40, 200)]
    plots.plot_ways(files, tmp_path / "w.png")
    assert drawn == {"ticks": ["20", "40", "200"], "labels": ["maml", "metasgd"], "errorbars": 2}


@pytest.mark.parametrize("metric,mean,ci,text", [
    ("accuracy", 0.8134, 0.0071, "81.3% ± 0.7%"),
    ("accuracy", 0.25, None, "25.0%"),
    ("loss", 1.4812, 0.3, "1.48 ± 0.30"),
    ("loss", 0.61234, 0.03456, "0.612 ± 0.035"),
    ("loss", 0.6, None, "0.6"),
])
def test_one_metric_format(metric, mean, ci, text):
    assert format_value(metric, mean, ci) == text


@pytest.mark.parametrize("script", ["reproduce_stress_test.sh", "reproduce_omniglot20.sh"])
def test_reproduce_scripts_state_their_budgets_and_refuse_bad_ones(script, tmp_path):
    import subprocess
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / script
    shown = subprocess.run(["bash", str(path), "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0
    assert "--budget cpu    reduced: 200 meta-iterations, validation on 50 tasks every" in shown.stdout
    bad = subprocess.run(["bash", str(path), "--budget", "gpu"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and "unknown budget 'gpu'" in bad.stderr
    missing = subprocess.run(["bash", str(path), "--budget", "cpu", "--data-root",
                              str(tmp_path / "nope")], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


def test_stress_test_table_puts_results_beside_the_papers_numbers(tmp_path):
    import importlib.util
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "stress_test_table.py"
    spec = importlib.util.spec_from_file_location("stress_test_table", script)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    for name, ways, accuracy in (("maml-20w1s", 20, 0.5615), ("maml-50w1s", 50, 0.31)):
        path = _result(tmp_path, f"results/stress-test/cpu/{name}.json", "maml", ways, accuracy)
        record = json.loads(path.read_text())
        record["protocol"].update(tasks=300, iterations=200, run_iterations=200)
        path.write_text(json.dumps(record))
    (tmp_path / "results" / "omniglot20" / "cpu").mkdir(parents=True)
    (tmp_path / "results" / "omniglot20" / "cpu" / "maml-20w1s.json").write_text(
        (tmp_path / "results" / "stress-test" / "cpu" / "maml-20w1s.json").read_text())
    readme = tmp_path / "README.md"
    readme.write_text("".join(f"<!-- results:{n}:start -->\nold\n<!-- results:{n}:end -->\n"
                              for n in ("omniglot20-cpu", "stress-test-cpu", "protocol-cost")))
    assert table.main(["--results", str(tmp_path / "results"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| maml | 91.93 ± 0.72 | 97.65 ± 0.20 | 56.1 ± 2.0 | not run | 200 / — |" in text
    assert "| maml | 56.1 ± 2.0 | 31.0 ± 2.0 |" in text and "| metalstm | not run | not run |" in text
    assert "meta-iterations per run: 200; meta-test tasks: 300" in text
    assert "not measured yet" in text and "old" not in text


def test_resume_compares_the_recorded_protocol_and_accepts_older_runs():
    from learnedopt.train import _check_same_run
    config = train_config(["--protocol", "omniglot20", "--algorithm", "maml", "--data-root", "D",
                           "--out", "o"])
    saved = config.to_dict()
    _check_same_run(saved, config)  # the same run
    older = {k: v for k, v in saved.items() if k != "protocol"}  # written before the field existed
    _check_same_run(older, config)
    with pytest.raises(ValueError, match="protocol: 'lake' -> 'omniglot20'"):
        _check_same_run({**saved, "protocol": "lake"}, config)
    with pytest.raises(ValueError, match="protocol must be a protocol name"):
        TrainConfig.from_dict({**saved, "protocol": 3}).validate()
