"""aemodel is a plain torch library: no Ray import anywhere in it."""

import ast
import pathlib
import subprocess
import sys

AEMODEL = pathlib.Path(__file__).resolve().parents[1] / "aemodel"


def test_no_ray_import_in_source():
    offenders = []
    for path in AEMODEL.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n == "ray" or n.startswith("ray.")]
    assert offenders == []


def test_importing_aemodel_does_not_load_ray():
    code = "import sys, aemodel; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
