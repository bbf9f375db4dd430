"""The package's layout: imports point only downwards through the four wings, and gated models
saved by earlier versions (before the wings existed) still load."""

import ast
import os

import numpy as np
import pytest

import dsa_tf
from dsa_tf import _keras

PACKAGE = os.path.dirname(dsa_tf.__file__)
DATA = os.path.join(os.path.dirname(__file__), "data")

# What each part of the package may import from dsa_tf (besides itself).
ALLOWED = {
    "_keras": set(),
    "models": {"_keras"},
    "structure": {"_keras"},
    "deploy": {"_keras", "structure"},
    "allocation": {"_keras", "structure", "deploy"},
    "run": {"_keras", "models", "structure", "deploy", "allocation"},
}


def _part(module: str) -> str:
    """The wing of a dotted dsa_tf module name: 'dsa_tf.structure.graph' -> 'structure'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _dsa_imports(path: str) -> list[str]:
    """The dsa_tf modules a file imports, as dotted names (``from dsa_tf import x`` gives
    ``dsa_tf.x``), wherever the import statement stands."""
    found = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "dsa_tf"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "dsa_tf":
                found += [f"dsa_tf.{a.name}" for a in node.names]
            elif node.module.startswith("dsa_tf."):
                found.append(node.module)
    return found


def _modules() -> list[tuple[str, str]]:
    """(wing, path) of every module below dsa_tf/, except the public API files."""
    result = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, PACKAGE)
            if name.endswith(".py") and relative not in ("__init__.py", "__main__.py"):
                result.append((relative.split(os.sep)[0].removesuffix(".py"), path))
    return result


def test_every_module_belongs_to_a_wing():
    assert {wing for wing, _ in _modules()} == set(ALLOWED)


@pytest.mark.parametrize("wing,path", _modules(), ids=lambda v: str(v).split("dsa_tf/")[-1])
def test_imports_point_only_downwards(wing, path):
    above = [m for m in _dsa_imports(path) if _part(m) not in ALLOWED[wing] | {wing}]
    assert not above, f"{path} ({wing}) imports from a wing above it: {above}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The layout test fails on the kind of import it exists to catch."""
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from dsa_tf.allocation.gates import is_gate\n"
                    "from dsa_tf import run\n")
    assert sorted(_part(m) for m in _dsa_imports(str(path))) == ["allocation", "run"]


def test_gated_model_saved_before_the_wings_loads(keras):
    """tests/data/gated_<flavour>.keras were written by dsa_tf before its modules moved into
    the wings (commit 6606fdb): a gated model with a residual add and keep ratios 0.5 / 0.3,
    with the outputs it gave then. It loads without custom_objects, computes the same
    outputs, and strips to the same size."""
    flavour = "keras3" if _keras.is_keras3(keras.layers.Dense(1)) else "tf_keras"
    path = os.path.join(DATA, f"gated_{flavour}.keras")
    expected = np.load(path.replace(".keras", "_expected.npz"))
    gated = keras.models.load_model(path, compile=False)
    assert len(dsa_tf.keep_ratios(gated)) == 2
    np.testing.assert_allclose(np.asarray(gated(expected["x"], training=False)), expected["y"],
                               rtol=1e-5, atol=1e-6)
    small = dsa_tf.strip(gated)
    assert dsa_tf.count_params(small) == int(expected["stripped_params"])
    np.testing.assert_allclose(np.asarray(small(expected["x"])), expected["y"],
                               rtol=1e-5, atol=1e-5)
