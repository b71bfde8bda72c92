"""The config layer: config.py at the bottom of the import graph, the block checks with their
owners, composed by pca_jax.checks."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_imports_no_pca_jax_module_and_no_jax():
  code = ("import sys; import pca_jax.config; "
          "print(sorted(m for m in sys.modules if m.startswith('pca_jax')), "
          "'jax' in sys.modules, 'jaxlib' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "['pca_jax', 'pca_jax.config'] False False"


def _imports(path: str) -> set[str]:
  """The pca_jax modules a file imports, at any depth of its code (lazy imports included)."""
  tree = ast.parse(open(path).read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pca_jax"):
      found.add(node.module)
      found.update(f"{node.module}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("pca_jax"))
  return found


def test_import_graph_has_no_circle():
  """Every pca_jax module, its imports resolved to modules (lazy ones too): no cycle."""
  pkg = os.path.join(ROOT, "pca_jax")
  modules = {}
  for dirpath, _, files in os.walk(pkg):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
        modules[rel.removesuffix(".__init__")] = os.path.join(dirpath, f)
  graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
  # a package's __init__ only hands names on; importing a submodule is not importing the package
  graph = {m: {i for i in deps if not (modules[i].endswith("__init__.py") and
                                       m.startswith(i + "."))} for m, deps in graph.items()}
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == 1:
        raise AssertionError("import circle: " + " -> ".join(stack[stack.index(n):] + [n]))
      if n not in state:
        visit(n)
    stack.pop()
    state[m] = 2
  for m in sorted(graph):
    if m not in state:
      visit(m)


@pytest.mark.parametrize("field,value,match", [
    ("data.source", "hdf5", "unknown data.source 'hdf5'"),
    ("data.eval_crop_fraction", 1.5, "data.eval_crop_fraction must be in (0, 1]"),
    ("model.stem", "tiny", "unknown model.stem 'tiny'"),
    ("model.width", 0, "model.width must be a positive integer, got 0"),
    ("score.kind", "aum", "unknown score.kind 'aum'"),
    ("score.num_models", 0, "score.num_models must be a positive integer, got 0"),
    ("select.mode", "best", "unknown select.mode 'best'"),
    ("select.ccs_beta", 1.0, "select.ccs_beta must be a fraction in [0, 1)"),
    ("combine.fit", "stretch", "unknown combine.fit 'stretch'"),
    ("train.optimizer", "lamb", "unknown train.optimizer 'lamb'"),
    ("score.train.schedule_unit", "minute", "unknown score.train.schedule_unit 'minute'"),
    ("benchmark.teacher.label_mode", "dark", "unknown benchmark.teacher.label_mode 'dark'"),
    ("train.crop_ratio", (2.0, 1.0), "train.crop_ratio must satisfy 0 < min <= max"),
])
def test_each_block_names_its_field(field, value, match):
  from pca_jax.checks import validate
  from pca_jax.config import base_config
  from tests.helpers import set_fields
  with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")
                     .replace("[", r"\[")):
    validate(set_fields(base_config(), {field: value}))


def test_tune_and_benchmark_blocks_are_checked_only_when_used():
  from pca_jax.checks import validate
  from pca_jax.config import base_config
  from tests.helpers import set_fields
  c = set_fields(base_config(), {"tune.epochs": 0, "benchmark.rded_factor": 0})
  validate(c)  # the default stages neither tune nor benchmark
  with pytest.raises(ValueError, match="tune.epochs must be a positive integer"):
    validate(set_fields(c.copy_and_resolve_references(), {"stages": "score,tune,select"}))
  with pytest.raises(ValueError, match="benchmark.rded_factor must be a positive integer"):
    validate(set_fields(c.copy_and_resolve_references(), {"stages": "score,benchmark"}))
