"""Execute the notebooks and render them, with their figures, to HTML under ``reports/notebooks/``.

    python inference/render_notebooks.py [--out reports/notebooks] [--timeout 1800] [NOTEBOOK ...]

(``make notebooks``.) Each notebook runs top to bottom in a fresh kernel from its own folder, with the settings of
its parameter cell, and is written as ``<out>/<name>.html`` (atomically; the committed ``.ipynb`` files stay
without outputs), so that someone who does not run Jupyter can read the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(path, out_dir, kernel_name: str = "python3", timeout: int = 1800) -> Path:
    """Execute notebook ``path`` and write it as HTML to ``out_dir/<stem>.html``; returns the written path."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    path, out_dir = Path(path), Path(out_dir)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, kernel_name=kernel_name, timeout=timeout, resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    html, _ = HTMLExporter().from_notebook_node(nb)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{path.stem}.html"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", help="notebooks to render (default: notebooks/*.ipynb)")
    p.add_argument("--out", default=str(ROOT / "reports" / "notebooks"), help="folder of the HTML files")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel to run them with")
    args = p.parse_args(argv)
    paths = [Path(n) for n in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    for path in paths:
        print(f"{path.name} -> {render(path, args.out, args.kernel, args.timeout)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
