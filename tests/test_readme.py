"""The README is a front page whose code runs: its size, its sections, its links, its numbers and its Python blocks.

The blocks run here in the test environment with their budgets shortened (``tests/readme_blocks.py``); ``.ci/run``
runs them again in a virtualenv installed exactly as the README's install command says.
"""

import pathlib
import re

import pytest

from tests import readme_blocks

REPO = pathlib.Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
SOURCE_URL = "https://github.com/sb3-npg/sb3_npg"
DOCS_URL = "https://sb3-npg.readthedocs.io/en/latest/"
BLOCKS = readme_blocks.python_blocks(README)


def test_readme_is_a_front_page() -> None:
    assert len(README.splitlines()) <= 200
    assert len(README.encode()) <= 12_000  # bytes, as a front-page check counts them
    headings = re.findall(r"^## (.+)$", README, flags=re.M)
    expected = ["Install", "Quickstart", "Save and load", "NPG, TRPO or PPO?", "Results", "Examples", "Citing", "License"]
    assert [heading for heading in headings if heading in expected] == expected


def test_readme_says_when_target_kl_holds() -> None:
    """The front page does not promise `target_kl` on every update for the default step, and names the exact one."""
    assert "every update moves the policy by about `target_kl`" not in README
    assert 'step_length="exact"' in README
    assert "35\u201386\u00d7" in README  # "35-86x" with the en dash and the multiplication sign


def test_readme_links_are_absolute_and_resolve() -> None:
    targets = re.findall(r"\]\(([^)\s]+)\)", README) + re.findall(r"<(https?://[^>]+)>", README)
    assert targets
    relative = [target for target in targets if not target.startswith(("https://", "http://"))]
    assert relative == [], "PyPI shows the README without the repository: links must be absolute"
    for target in targets:
        if target.startswith(SOURCE_URL + "/"):
            match = re.fullmatch(re.escape(SOURCE_URL) + r"/(blob|tree|raw)/main/([^#]+)(#.*)?", target)
            assert match, target
            path = REPO / match.group(2)
            assert path.is_dir() if match.group(1) == "tree" else path.is_file(), f"{target}: no {path}"
        elif target.startswith(DOCS_URL):
            page = target[len(DOCS_URL) :].split("#")[0]
            assert page.endswith(".html"), target
            assert (REPO / "docs" / page.replace(".html", ".md")).is_file(), f"{target}: no docs page"


def test_setup_cfg_names_the_readme_urls() -> None:
    setup_cfg = (REPO / "setup.cfg").read_text()
    assert f"url = {SOURCE_URL}" in setup_cfg
    assert "https://sb3-npg.readthedocs.io" in setup_cfg


def heldout_rows(stats_file: pathlib.Path) -> dict[str, dict[str, str]]:
    """The held-out table of a ``heldout_stats.py`` record: per env, its cells by column name, bold marks removed."""
    heldout = stats_file.read_text().split("## Held-out seeds")[1].split("## Tuning seeds")[0]
    lines = [line for line in heldout.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [cell.replace("*", "").strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_results_table_matches_heldout_stats() -> None:
    """
    The README's held-out MuJoCo rows are the ones benchmarks/heldout_stats.py wrote for today's entries
    (``heldout/npg/stats.md``), number for number; a TRPO cell is marked ² exactly when TRPO has fewer seeds.
    """
    rows = heldout_rows(REPO / "benchmarks" / "results" / "heldout" / "npg" / "stats.md")
    checked = set()
    for line in README.splitlines():
        if not re.match(r"^\| \S+-v5 \| 3\u2013\d \|", line):
            continue
        env, _, npg, trpo, ppo, probability = (cell.replace("*", "").strip() for cell in line.strip("|").split("|"))
        row = rows[env]
        assert npg == row["NPG IQM [95 % CI]"], env
        assert trpo.rstrip("\u00b2") == row["TRPO IQM [95 % CI]"], env
        seeds = [int(n) for n in row["seeds NPG / TRPO / PPO"].split(" / ")]
        assert trpo.endswith("\u00b2") == (seeds[1] < seeds[0]), env
        assert probability == row["P(NPG > TRPO) [95 % CI]"], env
        assert ppo == ("" if row.get("PPO IQM [95 % CI]", "-") == "-" else row["PPO IQM [95 % CI]"]), env
        checked.add(env)
    assert checked == {"HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Swimmer-v5"}


@pytest.mark.parametrize("page", ["npg.md", "results.md"])
def test_docs_heldout_tables_match_heldout_stats(page: str) -> None:
    """The held-out tables of the algorithm and results pages carry the same record's numbers as the README's rows."""
    rows = heldout_rows(REPO / "benchmarks" / "results" / "heldout" / "npg" / "stats.md")
    text = (REPO / "docs" / page).read_text()
    table = text[text.index("| env | NPG IQM [95 % CI] | TRPO IQM [95 % CI] | PPO IQM [95 % CI] |") :].split("\n\n")[0]
    checked = set()
    for line in table.splitlines()[2:]:
        cells = [cell.replace("*", "").replace("\u2013", "-").strip() for cell in line.strip("|").split("|")]
        row = rows[cells[0]]
        columns = ["NPG IQM [95 % CI]", "TRPO IQM [95 % CI]", "PPO IQM [95 % CI]", "P(NPG > TRPO) [95 % CI]"]
        assert cells[1:5] == [row[column] for column in columns], cells[0]
        checked.add(cells[0])
    assert checked == set(rows)


def test_install_commands_are_the_ones_ci_runs() -> None:
    """.ci/run installs and tests with the README's own commands, and runs the README's blocks after its install."""
    commands = re.findall(r"^```bash\n(python3 -m venv .+)\n```$", README, flags=re.M)
    assert len(commands) == 2
    train, test = commands
    assert "pip install -e . && python examples/quickstart.py" in train
    ci = (REPO / ".ci" / "run").read_text()
    for step in test.split(" && ")[2:]:  # the steps after creating and activating the virtualenv
        assert re.search(rf"^{re.escape(step)}(\s|$)", ci, flags=re.M), f".ci/run does not run `{step}`"
    assert re.search(r"^pip install -e \.(\s|$)", ci, flags=re.M), ".ci/run does not install as the README says"
    assert "python tests/readme_blocks.py" in ci


def test_readme_blocks_found_and_shortened() -> None:
    assert len(BLOCKS) >= 4
    assert any("RecurrentNPG" in block for block in BLOCKS)
    assert any("MaskableNPG" in block for block in BLOCKS)
    for block in BLOCKS:
        assert block.count(".learn(") == len(readme_blocks.learn_budgets(block)), "a learn() budget the test cannot shorten"
        shortened = readme_blocks.learn_budgets(readme_blocks.shorten(block))
        assert all(budget <= readme_blocks.SHORT_BUDGET for budget in shortened)


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{index + 1}" for index in range(len(BLOCKS))])
def test_readme_block_runs(index: int, tmp_path: pathlib.Path) -> None:
    completed = readme_blocks.run_block(BLOCKS[index], tmp_path)
    assert completed.returncode == 0, f"{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
