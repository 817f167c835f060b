"""The package's import graph: dependencies point one way, from the app down to the foundations.

Each module's top-level imports make an arrow from its part of the package (``pool``,
``responses``, ``store``...) to another. Every arrow must point to a lower layer below, so no
two parts import each other and nothing low reaches up (the pool does not parse Responses
bodies, the stores know no service). A new part has to be placed in a layer here.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "responses_proxy"

# From the foundations up; a part may import only from layers below its own.
LAYERS = [
    {"errors", "config"},
    {"store", "validation", "upstream", "crypto", "server"},
    {"items", "relay", "requestbody", "services"},
    {"cli", "auth", "observability"},
    {"pool", "keys", "conversations", "catalog", "usage"},
    {"health", "responses", "metrics", "openapi", "status"},
    {"__init__"},
]


def part_of(module):
    """``responses_proxy.pool.refresh`` -> ``pool``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def arrows():
    """{(from part, to part): [the module that imports, ...]} for every top-level import."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        if "migrations" in relative.parts:
            continue  # Alembic's scripts are run by Alembic, not imported by the package
        module = ".".join(relative.parts)
        package = module[:-len(".__init__")] if module.endswith(".__init__") else module.rsplit(".", 1)[0]
        for node in ast.parse(path.read_text()).body:
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    if node.module:
                        targets = [".".join([*base, node.module])]
                    else:
                        targets = [".".join([*base, alias.name]) for alias in node.names]
                else:
                    targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target.startswith("responses_proxy.") or target == "responses_proxy":
                    source, destination = part_of(module), part_of(target)
                    if source != destination:
                        found.setdefault((source, destination), []).append(module)
    return found


def layer_of(part):
    for index, layer in enumerate(LAYERS):
        if part in layer:
            return index
    raise AssertionError(f"{part!r} is in no layer of tests/test_architecture.py: place it")


def test_every_part_of_the_package_has_a_layer():
    parts = {path.stem if path.is_file() else path.name
             for path in PACKAGE.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()}
    for part in parts:
        layer_of(part)


def test_every_import_points_down():
    upward = [f"{source} -> {destination} (in {', '.join(sorted(set(modules)))})"
              for (source, destination), modules in sorted(arrows().items())
              if layer_of(destination) >= layer_of(source)]
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_the_graph_has_no_cycle():
    graph = {}
    for source, destination in arrows():
        graph.setdefault(source, set()).add(destination)

    def visit(part, path):
        assert part not in path, "import cycle: " + " -> ".join([*path, part])
        for following in graph.get(part, ()):
            visit(following, [*path, part])

    for part in graph:
        visit(part, [])
