"""Documentation that cannot drift: every public function of DESIGN's API table documents its
arguments, what it returns and what it raises (Google style, what the docs site's API reference
is generated from); the README stays a front door and its Python runs as written."""

import contextlib
import inspect
import io
import re
from pathlib import Path

import numpy as np
import pytest

from geometry import (
    activations,
    collapse,
    data,
    jacobians,
    matfree,
    metric,
    probe,
    regions,
    similarity,
    spectra,
    theory,
    training,
    weights,
)
from geometry import report as report_module

ROOT = Path(__file__).resolve().parents[1]

# DESIGN.md's table of public names, module by module
PUBLIC = {
    activations: ["get"],
    jacobians: ["jacobian_field"],
    probe: ["layers", "activations", "activation_stats", "input_jacobian_field", "local_jacobian_field", "outputs",
            "inputs", "token_jacobians", "local_singular_values", "layer_function", "capture_fn"],
    report_module: ["report"],
    matfree: ["singular_values", "log_volume", "spectral_density", "frobenius_norm_squared"],
    regions: ["partition"],
    spectra: ["singular_values", "numerical_rank", "effective_rank", "stable_rank", "condition_number",
              "log_volume", "summary", "chained_ranks"],
    metric: ["pullback_metric"],
    similarity: ["cka"],
    collapse: ["collapse_metrics"],
    data: ["make_dataset", "grid", "load_digits", "load_dataset"],
    theory: ["prob_any_dead", "prob_relu_rank_deficient", "mean_field", "fuss_catalan"],
    training: ["train"],
    weights: ["eigenvalues", "stable_rank", "power_law_fit"],
}


def _sections(doc: str) -> dict[str, list[str]]:
    """{section title: its lines} of a Google-style docstring (after inspect.cleandoc)."""
    sections, current = {}, None
    for line in doc.splitlines():
        heading = re.fullmatch(r"(Args|Arguments|Returns|Raises|Attributes|Yields):", line.strip())
        if heading and not line.startswith(" "):
            current = sections.setdefault(heading.group(1), [])
        elif current is not None and line.strip() and not line.startswith(" "):
            current = None  # prose after a section
        elif current is not None:
            current.append(line)
    return sections


@pytest.mark.parametrize("module, name", [(m, n) for m, names in PUBLIC.items() for n in names],
                         ids=lambda v: getattr(v, "__name__", v))
def test_every_public_function_documents_args_returns_and_raises(module, name):
    function = getattr(module, name)
    doc = inspect.getdoc(function) or ""
    sections = _sections(doc)
    missing = {"Returns", "Raises"} - set(sections)
    parameters = [p for p in inspect.signature(function).parameters if p not in ("self", "cls")]
    if parameters and "Args" not in sections:
        missing.add("Args")
    assert not missing, f"{module.__name__}.{name} lacks {sorted(missing)}"
    documented = set(re.findall(r"^\s{2,4}(\w+)(?: \(.*?\))?:", "\n".join(sections.get("Args", [])), re.M))
    assert documented == set(parameters), (f"{module.__name__}.{name}: Args documents {sorted(documented)}, "
                                           f"the signature has {sorted(parameters)}")
    for exception in re.findall(r"^\s{2,4}([\w.]+):", "\n".join(sections["Raises"]), re.M):
        assert exception.split(".")[-1].endswith(("Error", "Exception")), (name, exception)


def test_a_docstring_section_parser_that_can_fail():
    sections = _sections("Summary.\n\nArgs:\n    x: a value.\n\nReturns:\n    y.\n\nMore prose.")
    assert sections["Args"] == ["    x: a value.", ""] and sections["Returns"] == ["    y.", ""]
    assert "Raises" not in sections


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) <= 15_000, f"README.md is {len(text)} characters; move detail into docs/"
    for target in re.findall(r"\]\((?!https?://|#)([^)]+)\)", text):
        assert (ROOT / target.split("#")[0]).exists(), f"README links to missing {target}"


def _numbers(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+\.?\d*(?:e[-+]?\d+)?|NaN", text)]


def test_the_readmes_python_runs_as_written_and_prints_what_it_shows(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    shown = re.findall(r"```python\n.*?```\s*\n\s*prints\s*\n\s*```text\n(.*?)```", text, re.S)
    assert blocks and len(shown) == 1, "the README shows one Python example and what it prints"
    monkeypatch.chdir(tmp_path)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        for block in blocks:
            exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 - the README's code
    printed = output.getvalue()
    # the same words, and the same numbers to the 3 digits shown (another CPU may round float32 differently)
    assert re.sub(r"[-\d.e+]+|NaN|\s+", " ", printed).split() == re.sub(r"[-\d.e+]+|NaN|\s+", " ", shown[0]).split()
    np.testing.assert_allclose(_numbers(printed), _numbers(shown[0]), rtol=0.02)
    assert (tmp_path / "report.png").stat().st_size > 10_000  # the figure it says it writes
