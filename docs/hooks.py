"""MkDocs hooks: the committed figures live in figures/, outside docs/; publish them under the
same path so that pages can show them (`figures/NAME.png`) without a second copy in git."""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def on_files(files, config):
    for figure in sorted((ROOT / "figures").glob("*.png")):
        files.append(File.generated(config, f"figures/{figure.name}", abs_src_path=str(figure)))
    return files
