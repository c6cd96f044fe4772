"""The Python snippets of ``docs/coming_from_ppo_trpo.md`` run as written, with their budgets made tiny."""

import pathlib
import re

import pytest

PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "coming_from_ppo_trpo.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
TINY_BUDGET = 64  # learn() still collects one full rollout of n_steps


def test_snippets_found() -> None:
    assert len(SNIPPETS) == 8
    assert all("total_timesteps=" in snippet for snippet in SNIPPETS)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet{index}" for index in range(len(SNIPPETS))])
def test_snippet_runs(snippet: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.sub(r"total_timesteps=[\d_]+", f"total_timesteps={TINY_BUDGET}", snippet)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(PAGE), "exec"), {"__name__": "__snippet__"})
