"""The package's import graph: no cycles, dependencies pointing one way, no import dodging inside
functions. Read from the source with ``ast`` (nothing is imported)."""
import ast
import os

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "orthohash_jax")
# Lower layers never import higher ones (a module may import its own layer or lower).
LAYERS = [
    {"cli", "config_base", "codebook", "losses", "hamming_kernel", "retrieval", "metrics",
     "revisited", "parallel", "augment", "data", "images", "plots", "summary", "files",
     "xla_cpu"},
    {"models", "backbones", "codes_file", "checkpoint", "reporting", "methods"},
    {"trainer", "evaluation", "workdir"},
    {"run"},
    {"main", "export", "instance", "search", "weights", "serve"},
]


def module_imports():
  """{module: set of orthohash_jax modules it imports} (sub-packages collapse to their top);
  also the (module, line) of every orthohash_jax import inside a function."""
  graph, nested = {}, []
  for dirpath, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
      module = rel.split(".")[0] if rel != "__init__" else "__init__"
      tree = ast.parse(open(path).read())
      deps = graph.setdefault(module, set())
      for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
            "orthohash_jax"):
          parts = node.module.split(".")
          names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
          names = [a.name.split(".")[1] for a in node.names
                   if a.name.startswith("orthohash_jax.")]
        deps.update(n for n in names if n != module)
      for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
          for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and "orthohash_jax" in ast.dump(node):
              nested.append((rel, node.lineno))
  return graph, nested


def test_no_cycles_and_layers_point_down():
  graph, nested = module_imports()
  assert not nested, f"imports inside functions: {nested}"
  layer = {m: i for i, group in enumerate(LAYERS) for m in group}
  unknown = sorted(m for m in graph if m not in layer and m != "__init__")
  assert not unknown, f"modules missing from LAYERS: {unknown}"
  for module, deps in graph.items():
    for dep in deps:
      assert layer[dep] <= layer.get(module, 0), f"{module} imports higher-layer {dep}"
  state = {}  # depth-first search for a cycle

  def visit(m, path):
    state[m] = "open"
    for d in graph.get(m, ()):
      assert state.get(d) != "open", f"import cycle: {' -> '.join(path + [d])}"
      if d not in state:
        visit(d, path + [d])
    state[m] = "done"

  for m in graph:
    if m not in state:
      visit(m, [m])
