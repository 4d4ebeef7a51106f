"""Smoke tests of the benchmark harness (bench/): tiny sizes, the fields of the JSON results and of
the Markdown they render to. Nothing here asserts a speed: speed claims come from bench/ runs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from bench import conv_learner, machine, memory, meta_train, ops as bench_ops, optimizer as bench_optimizer, report, results
from bench.timing import measure, measure_interleaved
from learnedopt import _extension, ops, reference

CPU = torch.device("cpu")
MACHINE_FIELDS = ("hostname", "cpu_model", "cpu_count", "threads", "gpu_model", "torch", "cuda")
HEADER_FIELDS = ("schema", "benchmark", "device", "date", "command", "git_commit", "backend",
                 "machine", "results", "complete")


def check_header(record: dict, benchmark: str) -> None:
    for field in HEADER_FIELDS:
        assert field in record, field
    assert record["schema"] == "learnedopt-bench/1"
    assert record["benchmark"] == benchmark and record["device"] == "cpu"
    assert record["complete"] is True
    assert record["command"].startswith(f"python3 -m bench.{benchmark}")
    for field in MACHINE_FIELDS:
        assert field in record["machine"], field
    assert record["machine"]["threads"] == torch.get_num_threads()


def check_rows(rows: list[dict]) -> None:
    """Every row is either a measurement with its timing or says why it is missing."""
    assert rows
    for r in rows:
        assert r["status"] in ("ok", "skipped", "error")
        if r["status"] == "ok":
            t = r["timing"]
            assert 0 < t["min_s"] <= t["q1_s"] <= t["median_s"] <= t["q3_s"] <= t["max_s"]
        else:
            assert isinstance(r["reason"], str) and r["reason"]


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ops_record(tmp_path_factory):
    out = tmp_path_factory.mktemp("ops") / "ops.json"
    bench_ops.main(["--quick", "--sizes", "1000,3000", "--ops", "preprocess,turtle_step",
                    "--impls", "eager,fused", "--budget", "0.01", "--threads", "1",
                    "--out", str(out)])
    return out, json.loads(out.read_text())


def test_measure_reports_ordered_statistics():
    t = measure(lambda i: time.sleep(0.001), CPU, budget_s=0.02, warmup_s=0.0, min_samples=4)
    assert t.samples >= 4 and t.calls_per_sample >= 1
    assert 0.001 <= t.min_s <= t.q1_s <= t.median_s <= t.q3_s <= t.max_s


def test_measure_passes_distinct_call_indices():
    seen = []
    measure(seen.append, CPU, budget_s=0.0, warmup_s=0.0, min_samples=3, min_sample_s=0.0)
    assert seen == list(range(len(seen))) and len(seen) >= 5  # 2 warm-up calls + 3 samples


def test_measure_interleaved_takes_samples_in_turn():
    order = []
    timings = measure_interleaved({"a": lambda i: order.append("a"), "b": lambda i: order.append("b")},
                                  torch.device("cpu"), budget_s=0.0, min_samples=4,
                                  min_sample_s=0.0, warmup_calls=1)
    assert set(timings) == {"a", "b"}
    assert all(t.samples == 4 and t.calls_per_sample == 1 for t in timings.values())
    assert order == ["a", "b"] + ["a", "b"] * 4  # warm-up of each, then alternating samples


def test_measure_interleaved_warms_up_after_every_switch():
    calls = {"a": [], "b": []}
    timings = measure_interleaved({k: (lambda i, k=k: calls[k].append(i)) for k in calls},
                                  torch.device("cpu"), budget_s=0.0, min_samples=3,
                                  min_sample_s=0.0, warmup_calls=1, switch_warmup_calls=2)
    assert all(t.samples == 3 and t.calls_per_sample == 1 for t in timings.values())
    # 1 initial warm-up, then per sample 2 untimed + 1 timed calls; indices keep counting.
    assert calls["a"] == calls["b"] == list(range(1 + 3 * 3))


def test_peak_memory_sees_a_freed_tensor():
    with memory.PeakMemory(CPU) as peak:
        x = torch.ones(1 << 20)  # 4 MiB, freed before the block ends
        del x
    assert peak.bytes is not None and peak.bytes >= 4 << 20


def test_rotation_copies_cover_the_cache_and_are_bounded():
    assert bench_ops.rotation_copies(1 << 20, 32 << 20) == 64
    assert bench_ops.rotation_copies(16 << 20, 32 << 20) == 4
    assert bench_ops.rotation_copies(1 << 30, 32 << 20) == 1


def test_flop_counts_follow_the_stated_rule():
    # Going from 1 to 4 LSTM inputs adds 3 input columns to a 4H-row matmul: 2*4H*3 FLOP.
    h = 20
    assert bench_ops.meta_lstm_forward_flop(h, 4) - bench_ops.meta_lstm_forward_flop(h, 1) == 2 * 4 * h * 3
    # One Linear(3 -> 20) then Linear(20 -> 1): 2*3*20 + 20 + 2*20*1 + 1, plus momentum and update.
    assert bench_ops.turtle_forward_flop([3, 20, 1]) == 120 + 20 + 40 + 1 + 3 + 2
    spec = bench_ops.SPECS["meta_lstm_step"]()
    assert spec.flop_per_coordinate("forward+backward") == 3 * spec.flop_per_coordinate("forward")
    assert spec.values_per_coordinate("forward") == (4 + 2 * h) + (3 + 2 * h)


def test_op_specs_match_the_reference_outputs():
    """The declared output shapes and per-coordinate write counts agree with what the op returns."""
    gen = torch.Generator().manual_seed(0)
    n = 7
    for name, make in bench_ops.SPECS.items():
        spec = make()
        out = spec.call(getattr(reference, name),
                        spec.shared(CPU, torch.float32), spec.per_coordinate(n, CPU, torch.float32, gen))
        outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        assert [tuple(o.shape) for o in outs] == spec.output_shapes(n), name
        assert sum(o.numel() for o in outs) == spec.forward_writes * n, name


def _fp32_peak():
    if _extension._C is None:
        pytest.skip(_extension.LOAD_ERROR)
    return _extension._C.cpu_fp32_peak  # AttributeError: a build older than the probe


def test_cpu_fp32_peak_is_a_plausible_rate():
    peak = _fp32_peak()
    torch.set_num_threads(1)
    peak(1000)  # starts the OpenMP thread
    rate = peak(200_000)
    # Finite and positive, and no more than one core can do: two 16-lane FMA pipes (64 FLOP per
    # cycle) at 8 GHz. A loop the compiler had dropped would report an absurd rate.
    assert math.isfinite(rate) and 0 < rate <= 64 * 8e9


def test_cpu_fp32_peak_refuses_bad_iterations():
    peak = _fp32_peak()
    for bad in (0, -5):
        with pytest.raises(ValueError, match=">= 1"):
            peak(bad)
    for bad in (1.5, "10", True, None):
        with pytest.raises(TypeError, match="must be an int"):
            peak(bad)
    with pytest.raises(OverflowError):
        peak(1 << 70)


def _fake_ceilings(monkeypatch, mm_rate: float, probe: tuple):
    monkeypatch.setattr(machine, "measure_bandwidth", lambda *a: (1e10, "bandwidth: stub"))
    monkeypatch.setattr(machine, "measure_fp32_rate", lambda *a: mm_rate)
    monkeypatch.setattr(machine, "measure_cpu_fma_peak", lambda *a: probe)
    return machine.measure_ceilings(CPU, quick=True)


def test_cpu_fp32_ceiling_is_the_higher_of_matmul_and_probe(monkeypatch):
    c = _fake_ceilings(monkeypatch, 2e11, (5e11, "probe note"))
    assert c["fp32_flop_per_s"] == 5e11 and c["fp32_source"] == "fma_peak"
    assert c["fp32_mm_flop_per_s"] == 2e11 and c["fp32_fma_peak_flop_per_s"] == 5e11
    assert "probe note" in c["how"] and "used: fma_peak" in c["how"]
    c = _fake_ceilings(monkeypatch, 6e11, (5e11, "probe note"))
    assert c["fp32_flop_per_s"] == 6e11 and c["fp32_source"] == "torch.mm"
    assert "used: torch.mm" in c["how"]


def test_cpu_fp32_ceiling_falls_back_to_matmul_without_the_probe(monkeypatch):
    c = _fake_ceilings(monkeypatch, 2e11, (None, "learnedopt._C is not built"))
    assert c["fp32_flop_per_s"] == 2e11 and c["fp32_source"] == "torch.mm"
    assert c["fp32_fma_peak_flop_per_s"] is None
    assert "no FMA probe (learnedopt._C is not built)" in c["how"]


def test_fma_peak_measurement_names_a_missing_or_stale_extension(monkeypatch):
    monkeypatch.setattr(_extension, "_C", None)
    assert machine.measure_cpu_fma_peak(0.01) == (None, _extension.LOAD_ERROR)
    monkeypatch.setattr(_extension, "_C", object())
    rate, how = machine.measure_cpu_fma_peak(0.01)
    assert rate is None and "rebuild" in how


def test_fma_peak_measurement_runs_the_probe():
    _fp32_peak()
    torch.set_num_threads(1)
    rate, how = machine.measure_cpu_fma_peak(0.02)
    assert rate > 0 and "cpu_fp32_peak(" in how


def test_ops_result_file(ops_record):
    path, record = ops_record
    check_header(record, "ops")
    check_rows(record["results"])
    c = record["ceilings"]
    assert c["bandwidth_bytes_per_s"] > 0 and c["fp32_flop_per_s"] > 0 and c["how"]
    # The CPU's FP32 ceiling is the higher of torch.mm and the FMA probe, whichever was measured.
    assert c["fp32_flop_per_s"] >= c["fp32_mm_flop_per_s"] > 0
    if _extension._C is not None:
        assert c["fp32_fma_peak_flop_per_s"] > 0
        assert c["fp32_flop_per_s"] >= c["fp32_fma_peak_flop_per_s"]
        assert c["fp32_source"] in ("fma_peak", "torch.mm") and "cpu_fp32_peak" in c["how"]
    else:
        assert c["fp32_fma_peak_flop_per_s"] is None and c["fp32_source"] == "torch.mm"
    assert {"sizes", "dtype", "bytes_rule", "flop_rule", "shapes"} <= set(record["settings"])
    measured = {(r["op"], r["mode"], r["impl"], r["n"]) for r in record["results"]}
    assert len(measured) == 2 * 2 * 2 * 2  # ops x passes x implementations x sizes, ok or not
    for r in record["results"]:
        if r["status"] == "ok":
            assert r["coordinates_per_s"] > 0 and r["roofline_fraction"] > 0
            assert r["bound"] in ("memory", "compute") and r["copies"] >= 1
            assert r["speedup_vs_eager"] is not None  # eager ran at every size
        if r["impl"] == "fused":
            # Measured exactly where the build has the kernel; otherwise skipped with the reason.
            assert (r["status"] == "ok") == ops.available("cpu", r["op"])


def test_ops_markdown_has_one_row_per_op_pass_and_size(ops_record):
    _, record = ops_record
    text = results.render(record)
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(table) == 2 * 2 * 2
    assert "| op | pass | n | eager | compile | fused |" in text
    assert record["command"] in text


def test_compile_is_measured_or_skipped_with_a_reason(tmp_path):
    out = tmp_path / "ops.json"
    bench_ops.main(["--quick", "--sizes", "1000", "--ops", "preprocess", "--modes", "forward",
                    "--impls", "eager,compile", "--budget", "0.01", "--threads", "1", "--out", str(out)])
    record = json.loads(out.read_text())
    check_rows(record["results"])
    row = next(r for r in record["results"] if r["impl"] == "compile")
    if row["status"] == "ok":
        assert row["speedup_vs_compile"] == pytest.approx(1.0)


def test_meta_train_result_file(tmp_path):
    out = tmp_path / "mt.json"
    meta_train.main(["--quick", "--cases", "1", "--budget", "0.01", "--threads", "1",
                     "--data", "synthetic", "--out", str(out)])
    record = json.loads(out.read_text())
    check_header(record, "meta_train")
    check_rows(record["results"])
    assert {r["backend"] for r in record["results"]} == {"fused", "reference"}
    for r in record["results"]:
        if r["status"] == "ok":
            assert r["meta_iterations_per_s"] > 0 and r["peak_bytes"] > 0
            assert r["options"]["meta_batch_size"] >= 1
    assert "Meta-training, CPU" in results.render(record)


def test_synthetic_images_have_the_episode_layout():
    sampler = meta_train.SyntheticImageTasks(ways=5, shots=1, queries=3, device=CPU)
    batch = sampler.sample(2, torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (2, 5, 1, 28, 28) and batch.x_query.shape == (2, 15, 1, 28, 28)
    assert batch.y_support.dtype == torch.int64
    assert batch.y_query[0].tolist() == [c for c in range(5) for _ in range(3)]


def test_missing_omniglot_falls_back_to_synthetic_with_the_reason(tmp_path):
    sampler, note = meta_train.make_sampler("omniglot", "auto", tmp_path / "absent", CPU)
    assert isinstance(sampler, meta_train.SyntheticImageTasks)
    assert "synthetic" in note and str(tmp_path / "absent") in note
    with pytest.raises(SystemExit, match="no Omniglot data"):
        meta_train.make_sampler("omniglot", "omniglot", tmp_path / "absent", CPU)


def test_meta_train_case_numbers_and_defaults():
    # Cases 1-5 keep their numbers (the README and reports refer to them); ResNet-12 runs on request.
    names = [case.name for case in meta_train.CASES]
    assert names[:5] == ["sine TURTLE (SO)", "sine meta-learner LSTM",
                         "Omniglot 5-way 1-shot meta-learner LSTM", "Omniglot 5-way 1-shot TURTLE",
                         "Omniglot 5-way 1-shot MAML"]
    default = meta_train.parse_args([]).cases
    assert all(case.task != "resnet12" for case in default) and len(default) == 8
    assert meta_train.parse_args(["--cases", "all"]).cases == list(meta_train.CASES)
    assert [c.ways for c in meta_train.parse_args(["--cases", "7,8"]).cases] == [20, 20]
    with pytest.raises(SystemExit):
        meta_train.parse_args(["--cases", "11"])


def test_meta_train_20_way_sampler_has_20_classes(tmp_path):
    sampler, note = meta_train.make_sampler("omniglot", "synthetic", tmp_path, CPU, ways=20)
    batch = sampler.sample(1, torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (1, 20, 1, 28, 28) and "20-way" in note
    algorithm, learner = meta_train.build("metalstm++", "omniglot", CPU, {}, ways=20)
    assert learner.ways == 20 and algorithm.meta_batch_size == 4


def test_optimizer_result_file(tmp_path):
    out = tmp_path / "opt.json"
    bench_optimizer.main(["--tensors", "4", "--width", "8", "--budget", "0.01", "--threads", "1",
                          "--out", str(out)])
    record = json.loads(out.read_text())
    check_header(record, "optimizer")
    check_rows(record["results"])
    assert record["settings"]["parameters"] == 2 * (8 * 8 + 8)
    baseline = next(r for r in record["results"] if r["optimizer"] == bench_optimizer.BASELINE)
    assert baseline["status"] == "ok" and baseline["time_vs_adam_foreach"] == pytest.approx(1.0)
    assert "time vs Adam foreach" in results.render(record)


def test_optimizer_refuses_an_odd_tensor_count():
    with pytest.raises(SystemExit, match="even"):
        bench_optimizer.make_model(3, 8, CPU)


README = "# Title\n\nintro\n\n<!-- bench:cpu:start -->\nold cpu\n<!-- bench:cpu:end -->\n\n" \
         "middle\n\n<!-- bench:gpu:start -->\nold gpu\n<!-- bench:gpu:end -->\n\nend\n"


def test_report_rewrites_only_the_marked_sections(ops_record, tmp_path):
    path, _ = ops_record
    readme = tmp_path / "README.md"
    readme.write_text(README)
    report.main([str(path), "--readme", str(readme), "--plots", str(tmp_path / "plots")])
    text = readme.read_text()
    assert "old cpu" not in text and "old gpu" not in text
    assert text.startswith("# Title\n\nintro\n\n<!-- bench:cpu:start -->\n")
    assert "\nmiddle\n" in text and text.endswith("<!-- bench:gpu:end -->\n\nend\n")
    cpu = text[text.index("bench:cpu:start"):text.index("bench:cpu:end")]
    assert "| op | pass | n |" in cpu and path.name in cpu
    assert "No CUDA benchmark results" in text
    plot = tmp_path / "plots" / "ops-speedup-cpu.png"
    if ops.available("cpu", "preprocess"):
        pytest.importorskip("matplotlib")
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "ops-speedup-cpu.png" in cpu


def test_report_names_a_missing_marker(ops_record, tmp_path):
    path, _ = ops_record
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="bench:cpu:start"):
        report.main([str(path), "--readme", str(readme)])
    assert readme.read_text() == "# no markers\n"


def test_report_leaves_smoke_results_out_by_default(ops_record, tmp_path):
    _, record = ops_record
    smoke = tmp_path / "smoke.json"
    smoke.write_text(json.dumps({**record, "label": "smoke"}))
    assert "No CPU benchmark results" in report.main([str(smoke)])["cpu"]
    assert "**smoke**" in report.main([str(smoke), "--include-smoke"])["cpu"]


def test_report_picks_the_newest_file_per_device_and_benchmark(ops_record, tmp_path):
    _, record = ops_record
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({**record, "date": "2000-01-01T00:00:00+00:00"}))
    new.write_text(json.dumps(record))
    assert "new.json" in report.main([str(old), str(new)])["cpu"]


def test_report_shows_each_simd_path_beside_the_others(ops_record, tmp_path):
    _, record = ops_record
    files = []
    for name, path_name, date in (("avx512.json", "avx512", "2001"), ("avx2-old.json", "avx2", "2000"),
                                  ("avx2.json", "avx2", "2002")):
        machine = {**record["machine"], "simd_path": path_name, "host_simd_path": "avx512"}
        files.append(tmp_path / name)
        files[-1].write_text(json.dumps({**record, "machine": machine, "date": f"{date}-01-01"}))
    legacy = {**record, "machine": {k: v for k, v in record["machine"].items() if k != "simd_path"},
              "date": "1999-01-01"}  # before records named their path: an AVX-512 host's
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    cpu = report.main([str(f) for f in files] + [str(tmp_path / "legacy.json")])["cpu"]
    assert "avx512.json" in cpu and "avx2.json" in cpu
    assert "avx2-old.json" not in cpu and "legacy.json" not in cpu
    assert cpu.index("avx512.json") < cpu.index("on the AVX2 kernels") < cpu.index("avx2.json")


def test_load_json_refuses_other_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a learnedopt benchmark result"):
        results.load_json(bad)


def test_an_unknown_device_is_refused_clearly():
    with pytest.raises(SystemExit, match="expected cpu or cuda"):
        bench_ops.main(["--device", "tpu", "--sizes", "1000"])


def test_byom_result_file(tmp_path):
    from bench import byom
    out = tmp_path / "byom.json"
    byom.main(["--quick", "--cases", "1", "--algorithms", "turtle,maml", "--resnet-channels",
               "2,2,2,2", "--budget", "0.01", "--threads", "1", "--out", str(out)])
    record = json.loads(out.read_text())
    check_header(record, "byom")
    check_rows(record["results"])
    assert record["complete"] is True
    variants = {(r["part"], r["variant"]) for r in record["results"] if r["status"] == "ok"}
    assert variants == {("learner", "built-in"), ("learner", "nn.Module"), ("resnet12", "fused"),
                        ("resnet12", "reference"), ("resnet12", "none")}
    module_row = next(r for r in record["results"] if r["variant"] == "nn.Module")
    assert module_row["vs_builtin"] > 0
    fused_row = next(r for r in record["results"] if r["variant"] == "fused")
    assert fused_row["speedup_vs_reference"] > 0 and fused_row["peak_bytes"] > 0
    text = results.render(record)
    assert "nn.Module vs built-in" in text and "ResNet-12" in text


def test_distributed_result_file(tmp_path):
    """bench.distributed launches 1 and 2 real processes; Omniglot without data is skipped."""
    from bench import distributed as bench_distributed
    out = tmp_path / "distributed.json"
    bench_distributed.main(["--quick", "--repeats", "1", "--data-root", str(tmp_path / "none"),
                            "--timeout", "240", "--out", str(out)])
    record = json.loads(out.read_text())
    check_header(record, "distributed")
    skipped = [r for r in record["results"] if r["status"] != "ok"]
    assert [r["status"] for r in skipped] == ["skipped"] and "no Omniglot data" in skipped[0]["reason"]
    rows = {r["processes"]: r for r in record["results"] if r["status"] == "ok"}
    assert sorted(rows) == [1, 2]
    assert rows[1]["tasks_per_rank"] == 2 and rows[2]["tasks_per_rank"] == 1
    assert rows[2]["backend"] == "gloo" and rows[1]["backend"] is None
    assert all(r["iterations_per_s"] > 0 and r["threads_per_process"] == 1 for r in rows.values())
    assert rows[1]["speedup"] == 1.0
    assert rows[2]["efficiency"] == pytest.approx(rows[2]["speedup"] / 2)
    assert "scaling efficiency" in results.render(record)


def test_every_cpu_record_names_its_simd_path_and_fma_peak(monkeypatch):
    # AVX2-only and AVX-512 hosts give ratios several times apart: a record must say which it was.
    monkeypatch.delenv("LEARNEDOPT_CPU_CAPABILITY", raising=False)
    best = machine.cpu_simd_path()
    assert best in ("baseline", "avx2", "avx512")
    monkeypatch.setenv("LEARNEDOPT_CPU_CAPABILITY", "baseline")
    assert machine.cpu_simd_path() == "baseline"
    monkeypatch.delenv("LEARNEDOPT_CPU_CAPABILITY")
    info = machine.describe_machine(torch.device("cpu"))
    assert info["simd_path"] == best
    if _extension._C is not None:
        assert info["fp32_fma_peak_flop_per_s"] > 1e9
    record = {"machine": info, "device": "cpu", "date": "2026-01-01T00:00:00+00:00",
              "git_commit": "0" * 40}
    line = results.machine_line(record)
    assert f"{best} kernels" in line and ("GFLOP/s" in line) == (_extension._C is not None)
    assert info["host_simd_path"] == best


def test_a_record_names_the_environment_that_changes_its_timings(monkeypatch):
    # glibc's malloc thresholds alone make the LSTM's functional op 2x slower or faster at n = 10^6
    # (fresh outputs page-faulted in, or reused): a record and its caption must say they were set.
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4294967296")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("HOME_OF_SOMETHING_ELSE", "x")
    env = machine.performance_environment()
    assert env["MALLOC_TRIM_THRESHOLD_"] == "4294967296" and env["OMP_NUM_THREADS"] == "2"
    assert "HOME_OF_SOMETHING_ELSE" not in env
    assert machine.performance_environment({"PATH": "/bin"}) == {}
    record = {"machine": {"gpu_model": None, "cpu_model": "x", "cpu_count": 2, "threads": 2,
                          "torch": "t", "environment": {"MALLOC_TRIM_THRESHOLD_": "4294967296"}},
              "device": "cpu", "date": "d", "git_commit": "0" * 40}
    assert "`MALLOC_TRIM_THRESHOLD_=4294967296`" in results.machine_line(record)
    record["machine"]["environment"] = {}
    assert "with" not in results.machine_line(record)


def test_a_record_tells_a_lowered_path_from_an_avx2_only_host():
    # LEARNEDOPT_CPU_CAPABILITY=avx2 on an AVX-512 host runs other cores at other clocks than an
    # AVX2-only host: the caption must say which of the two gave the numbers.
    def caption(path, host):
        record = {"machine": {"gpu_model": None, "cpu_model": "x", "cpu_count": 2, "threads": 2,
                              "torch": "t", "simd_path": path, "host_simd_path": host},
                  "device": "cpu", "date": "d", "git_commit": "0" * 40}
        return results.machine_line(record)
    assert "avx2 kernels on an AVX-512 host" in caption("avx2", "avx512")
    assert "avx2 kernels on an AVX2-only host" in caption("avx2", "avx2")
    assert "avx512 kernels)" in caption("avx512", "avx512")
    assert "baseline kernels on an AVX2 host" in caption("baseline", "avx2")


def test_conv_learner_result_file(tmp_path, monkeypatch):
    monkeypatch.setattr(conv_learner, "IMAGE", (3, 16, 16))  # the harness, not 84×84 timings
    monkeypatch.setattr(conv_learner, "QUERIES", 2)
    out = tmp_path / "conv.json"
    conv_learner.main(["--quick", "--cases", "2", "--budget", "0.01", "--threads", "1",
                       "--channels-last", "false", "--out", str(out)])
    record = json.loads(out.read_text())
    check_header(record, "conv_learner")
    check_rows(record["results"])
    ok = [r for r in record["results"] if r["status"] == "ok"]
    assert {r["variant"] for r in record["results"]} == set(conv_learner.VARIANTS)
    assert "eager" in {r["variant"] for r in ok}
    for r in ok:
        assert r["timing"]["median_s"] > 0 and r["speedup_vs_eager"] > 0
        assert r["options"]["inner_steps"] == 8 and r["learner"]["name"] == "conv4"
        assert r["learner"]["channels_last"] is False
    assert "Conv learner, CPU" in results.render(record)


def test_turtle_host_ab_writes_both_checkouts_medians(tmp_path):
    """bench.turtle_host runs one worker per checkout per round (here the same checkout twice)
    and records every call's median for each; a ratio of a checkout with itself is near 1."""
    from bench import turtle_host

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "ab.json"
    assert turtle_host.main(["--trees", str(repo), str(repo), "--rounds", "1", "--budget", "0.02",
                             "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    medians = record["median_s"][str(repo)]
    assert set(medians) == {f"{p} n={n}" for p in turtle_host.PASSES for n in turtle_host.SIZES}
    assert all(0 < s < 1 for s in medians.values())
    assert len(record["runs"][str(repo)]) == 2  # both "trees" are this checkout


def test_turtle_host_refuses_a_missing_comparison():
    from bench import turtle_host

    with pytest.raises(SystemExit):
        turtle_host.main([])


def test_ab_runs_bench_ops_in_both_checkouts_and_compares_the_fused_medians(tmp_path):
    """bench.ab alternates the two checkouts' bench.ops runs and summarises the fused rows (here
    the same checkout twice: the keys match, the medians are real timings)."""
    from bench import ab

    repo = Path(__file__).resolve().parents[1]
    assert ab.main(["--trees", str(repo), str(repo), "--rounds", "1", "--name", "t", "--out-dir",
                    str(tmp_path), "--", "--ops", "preprocess", "--impls", "fused", "--sizes", "1e3",
                    "--modes", "forward", "--budget", "0.01", "--label", "smoke"]) == 0
    (folder,) = tmp_path.iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["median_s"]["A"]) == set(summary["median_s"]["B"]) == {"preprocess forward n=1000"}
    assert all(0 < s < 1 for side in summary["median_s"].values() for s in side.values())
    assert sorted(p.name for p in folder.iterdir()) == ["round0-A.json", "round0-B.json", "summary.json"]


def test_kernel_bound_reports_each_call_against_the_probe(tmp_path):
    from bench import kernel_bound

    out = tmp_path / "kb.json"
    assert kernel_bound.main(["--sizes", "300", "--threads", "1", "--budget", "0.01", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {(r["op"], r["call"]) for r in rows} == {("meta_lstm_step", "functional"),
                                                     ("meta_lstm_step", "inplace"), ("turtle_step", "functional")}
    for r in rows:
        assert r["n"] == 300 and r["threads"] == 1 and r["median_s"] > 0
        assert r["probe_fraction"] == pytest.approx(r["flop"] / r["median_s"] / r["probe_flop_per_s"])
        assert r["probe_flop_per_s"] >= max(r["probe_before_flop_per_s"], r["probe_after_flop_per_s"])
        assert isinstance(r["quiet"], bool)


def test_kernel_bound_marks_a_row_whose_probes_slowed_as_noisy():
    # A burst of other work slows the probe as it slows the kernel: the row must say so, and its
    # fraction must be against the best probe (the hardware's), not the slowed one.
    from bench import kernel_bound

    quiet = kernel_bound.judge({"flop": 100.0, "median_s": 1.0, "probe_before_flop_per_s": 950.0,
                                "probe_after_flop_per_s": 1000.0}, 1000.0)
    assert quiet["quiet"] and quiet["probe_fraction"] == pytest.approx(0.1)
    noisy = kernel_bound.judge({"flop": 100.0, "median_s": 1.0, "probe_before_flop_per_s": 1000.0,
                                "probe_after_flop_per_s": 500.0}, 1000.0)
    assert not noisy["quiet"] and noisy["probe_fraction"] == pytest.approx(0.1)
    assert not kernel_bound.judge({"flop": 1.0, "median_s": 1.0, "probe_before_flop_per_s": None,
                                   "probe_after_flop_per_s": None}, None)["quiet"]


def test_kernel_bound_refuses_bad_sizes():
    from bench import kernel_bound

    with pytest.raises(SystemExit):
        kernel_bound.main(["--sizes", "0"])


def test_kernel_phases_times_each_phase_of_the_kernels_it_reproduces(tmp_path):
    # The phase drivers are built from the kernel headers themselves: the phases chained on a group
    # must give the kernel's outputs bit for bit (the driver checks, the tool refuses a mismatch),
    # and every phase of both passes is timed.
    from bench import kernel_phases

    out = tmp_path / "phases.json"
    host = machine.host_simd_path()
    cap = "avx2" if host in ("avx2", "avx512") else "baseline"
    assert kernel_phases.main(["--n", "64", "--budget", "0.01", "--capabilities", cap, "--out", str(out)]) == 0
    records = {r["op"]: r for r in json.loads(out.read_text())["results"]}
    expected = {"meta_lstm": {("forward", x) for x in ("rows", "preprocess", "gates", "activations", "cells")}
                | {("backward", x) for x in ("rows", "cells_backward", "gates_backward", "weight_terms")},
                "turtle": {("forward", "io"), ("forward", "mlp"), ("forward", "dense_hidden"),
                           ("backward", "weight_terms")}}
    assert set(records) == set(expected)
    for op, record in records.items():
        assert record["capability"] == cap and record["n"] == 64 and record["phases_match_kernel"] is True
        assert {(p["pass"], p["name"]) for p in record["phases"]} == expected[op]
        assert record["forward_seconds"] > 0 and record["backward_seconds"] > 0
        for p in record["phases"]:
            assert p["seconds"] > 0
            assert p["share_of_kernel"] == pytest.approx(p["seconds"] / record[f"{p['pass']}_seconds"])
            flop = kernel_phases.PHASE_FLOP.get((op, p["pass"], p["name"]))
            if flop:
                assert p["probe_fraction"] == pytest.approx(
                    flop * 64 / p["seconds"] / record["fma_probe_flop_per_s"])


def test_kernel_phases_refuses_bad_arguments():
    from bench import kernel_phases

    with pytest.raises(SystemExit):
        kernel_phases.main(["--n", "40"])  # not a multiple of 16
    with pytest.raises(SystemExit):
        kernel_phases.main(["--capabilities", "sse9"])
    with pytest.raises(SystemExit):
        kernel_phases.main(["--ops", "adam"])
    if machine.host_simd_path() != "avx512":
        with pytest.raises(SystemExit):
            kernel_phases.main(["--capabilities", "avx512"])


@pytest.mark.parametrize("op, needle", [
    ("meta_lstm", "g.theta_new = meta_lstm_update(g.sigmoid_f, g.sigmoid_i, g.theta, g.grad);"),
    ("turtle", "g.theta_new = g.theta + g.alpha * g.u;")])
def test_kernel_phases_rejects_a_phase_that_drifted(tmp_path, monkeypatch, op, needle):
    # A driver whose phases no longer compute the kernel's outputs is refused, not reported.
    from bench import kernel_phases

    source = kernel_phases.SOURCES[op].read_text()
    assert needle in source
    planted = tmp_path / f"{op}.cpp"
    planted.write_text(source.replace(needle, needle + " g.theta_new += splat<V>(1e-3f);")
                       .replace('#include "harness.h"', f'#include "{kernel_phases.SOURCES[op].parent / "harness.h"}"'))
    monkeypatch.setitem(kernel_phases.SOURCES, op, planted)
    with pytest.raises(SystemExit, match="bit for bit"):
        kernel_phases.main(["--ops", op, "--n", "64", "--budget", "0.01", "--capabilities", "baseline",
                            "--out", str(tmp_path / "x.json")])


def test_report_says_when_a_simd_path_is_another_machine(ops_record, tmp_path):
    # An AVX2-only host's run is a different machine, not the AVX-512 host's AVX2 kernels.
    _, record = ops_record
    files = []
    for name, path_name, host in (("avx512.json", "avx512", "avx512"), ("avx2.json", "avx2", "avx2")):
        machine = {**record["machine"], "simd_path": path_name, "host_simd_path": host}
        files.append(tmp_path / name)
        files[-1].write_text(json.dumps({**record, "machine": machine}))
    cpu = report.main([str(f) for f in files])["cpu"]
    assert "on an AVX2-only host (another machine" in cpu and "on the AVX2 kernels" not in cpu
    assert "avx2 kernels on an AVX2-only host" in cpu
