"""The paper's figures exist and its tables and in-text numbers equal what the JSON says."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "paper"
sys.path.insert(0, str(PAPER))

import make_tables  # noqa: E402


def main_tex() -> str:
    return (PAPER / "main.tex").read_text()


def test_every_included_figure_is_committed():
    figures = re.findall(r"\\includegraphics(?:\[[^\]]*\])?\{([^}]+)\}", main_tex())
    assert len(figures) >= 8
    for name in figures:
        assert (ROOT / "figures" / name).is_file(), f"main.tex includes {name}, missing from figures/"


def test_every_input_table_exists():
    for name in re.findall(r"\\input\{([^}]+)\}", main_tex()):
        assert (PAPER / name).is_file(), f"main.tex inputs {name}, which does not exist"


@pytest.mark.parametrize("name", sorted(make_tables.generate()))
def test_generated_file_matches_json(name):
    """Regenerated from figures/*.json now, byte for byte the committed file: a value that differs fails."""
    committed = (make_tables.TABLES / name).read_text()
    assert committed == make_tables.generate()[name], f"paper/tables/{name} is stale: run python paper/make_tables.py"


def test_every_macro_used_is_generated():
    defined = set(re.findall(r"\\newcommand\{\\(\w+)\}", make_tables.generate()["numbers.tex"]))
    greek = {"Sigma", "Delta", "Gamma", "Lambda", "Omega", "Phi", "Pi", "Psi", "Theta", "Xi", "Upsilon"}
    used = set(re.findall(r"\\([A-Z][A-Za-z]+)", main_tex())) - greek
    assert used <= defined, f"main.tex uses undefined number macros: {sorted(used - defined)}"


def test_numbers_follow_the_json():
    # one value traced by hand through the pipeline: JSON -> macro text
    numbers = make_tables.generate()["numbers.tex"]
    fits = make_tables.load("linguistic_collapse")["fits"]
    assert f"\\newcommand{{\\LCCdnvRsq}}{{{make_tables.fmt(fits['cdnv']['r2'])}}}" in numbers
