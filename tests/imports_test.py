"""The modules of nin_jax import one another without cycles: each can be read knowing only the
modules below it. Imports inside functions count too (a lazy import hides a cycle, it does not
remove one)."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "nin_jax"


def imports_of(path: pathlib.Path) -> set[str]:
  """The nin_jax modules that the module at `path` imports anywhere in its source."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module == "nin_jax":
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nin_jax."):
      names.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("nin_jax."))
  return names - {path.stem}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph` ({module: modules it imports}) as [a, b, ..., a], or None."""
  state = {}  # module -> "open" while on the current path, "done" once every import is explored

  def visit(module, path):
    state[module] = "open"
    for imported in sorted(graph.get(module, ())):
      if state.get(imported) == "open":
        return path[path.index(imported):] + [imported]
      if imported not in state:
        cycle = visit(imported, path + [imported])
        if cycle:
          return cycle
    state[module] = "done"
    return None

  for module in sorted(graph):
    if module not in state:
      cycle = visit(module, [module])
      if cycle:
        return cycle
  return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_nin_jax_has_no_import_cycle():
  graph = {path.stem: imports_of(path) for path in PACKAGE.glob("*.py")}
  assert len(graph) > 10 and graph["train"]  # the package was found and read
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
