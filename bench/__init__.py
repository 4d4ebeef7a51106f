"""Benchmarks of learnedopt: the fused ops (ops.py), meta-training (meta_train.py) and the drop-in
optimizers (optimizer.py). Each writes a JSON file under bench/results/ and prints a Markdown
table; report.py renders the committed JSON into README tables and plots.

Run from the repository root, e.g. ``python3 -m bench.ops --quick`` or ``python3 bench/ops.py``.
"""
