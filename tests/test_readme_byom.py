"""The README's "Bring your own model and data" example, run as written (in a scratch folder, as
a user would from a fresh checkout)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Bring your own model and data\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_meta_trains_a_user_module_on_user_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_byom"}
    exec(compile(readme_example(), "README.md (bring your own model)", "exec"), namespace)
    result = namespace["result"]
    assert result["metric"] == "accuracy" and result["metrics"]["accuracy"]["tasks"] == 600
    assert result["learner"]["name"] == "module" and result["algorithm"] == "turtle"
    # Well above the 20% of guessing among 5 classes, so the run learned something.
    assert result["mean"] > 0.5
    assert (tmp_path / "runs" / "my-turtle" / "best.pt").is_file()
    out = capsys.readouterr().out
    assert f"{result['mean']:.1%} ± {result['ci95']:.1%}" in out
