"""The README's Python blocks run as written (in order, in one namespace, with training budgets cut down)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
#: budgets cut down so the blocks run in seconds: (pattern, replacement)
SHORTER = [(r"max_steps=\d+", "max_steps=2"), (r"val_check_interval=\d+", "val_check_interval=1"),
           (r"(val|test)_episodes=\d+", r"\1_episodes=4")]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_blocks():
    assert len(python_blocks()) >= 3


def test_the_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, block in enumerate(python_blocks(), 1):
        code = block
        for pattern, replacement in SHORTER:
            code = re.sub(pattern, replacement, code)
        try:
            exec(compile(code, f"README.md python block {number}", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - say which block failed
            pytest.fail(f"README python block {number} failed: {type(error).__name__}: {error}\n{block}")
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
