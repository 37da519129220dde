"""The package's layers import one way only, and project imports sit at module level.

Layers, lowest first (a module may import its own layer and the layers below it):

1. base: errors, atomic, cache, registry, resources, packages, chat_api, types (the
   records that flow between stages: benchmark rows, attacked prompts, verdicts), goals
   (the main job's targets)
2. config
3. models, embeddings, hidden (hooks on the residual stream, last-token states)
4. data: readers, sets, rendering, batches, benchmark readers, prompt sources, splits,
   refusals (the data *library*; the build is a command)
5. generate
6. methods
7. training, checkpoint
8. eval: attacks, judges, judging, metrics, capability, results, report
9. plots
10. analysis (its report draws with plots)
11. commands: data build, run (the main job), compare, tune, analyze, evaluate, task
    arithmetic
12. entry points: cli, api, the package itself (``repbend/__init__.py``), __main__

Every module under src/repbend is parsed with ``ast``; all its imports count, also those
inside functions. A lazy project import (inside a function) is an error unless
:data:`LAZY_ALLOWED` lists it with its reason; third-party lazy imports (torch extras,
vllm, deepspeed, lm_eval, optuna, ...) are not counted.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "repbend"

LAYERS = (
    ("base", ("repbend.errors", "repbend.atomic", "repbend.files", "repbend.cache", "repbend.registry", "repbend.resources",
              "repbend.packages", "repbend.chat_api", "repbend.types", "repbend.goals")),
    ("config", ("repbend.config",)),
    ("models", ("repbend.models", "repbend.embeddings", "repbend.hidden")),
    ("data", ("repbend.data",)),
    ("generate", ("repbend.generate",)),
    ("methods", ("repbend.methods",)),
    ("training", ("repbend.training", "repbend.checkpoint")),
    ("eval", ("repbend.eval",)),
    ("plots", ("repbend.plots",)),
    ("analysis", ("repbend.analysis",)),
    ("commands", ("repbend.commands",)),
    ("entry points", ("repbend.cli", "repbend.api", "repbend.__main__", "repbend")),
)

# Deliberate lazy imports of project modules: (module, function) -> why. Keep it short.
# (repbend/__init__.py's __getattr__ loads repbend.api through importlib: no import
# statement, nothing to list.)
LAZY_ALLOWED = {
    ("repbend.config", "registered_methods"): "plugin discovery (see UPWARD_ALLOWED)",
    # For import speed: each subcommand imports its command (and so torch and transformers)
    # only when it runs, so `repbend --help`, `repbend report` and a config error answer
    # at once.
    **{("repbend.cli", handler): "import speed" for handler in
       ("_train", "_eval", "_data", "_report", "_run", "_analyze", "_tune", "_compare", "_relearn")},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The index of the module's layer: the longest prefix in :data:`LAYERS` that names it
    (``repbend`` itself names the package's ``__init__`` only)."""
    best, found = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module.startswith(prefix + ".") and prefix != "repbend"
            if (module == prefix or inside) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} belongs to no layer: add it to LAYERS in {__file__}"
    return found


def project_imports(module: str, path: Path) -> list:
    """(imported module, line, enclosing function or None) for every import of a project
    module in ``path``; ``from package import name`` counts as the submodule where there is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) for target in node.targets if isinstance(target, ast.Name)}

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and function is None else function
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and child.func.attr == "import_module" and child.args):
                # importlib.import_module(NAME): a string constant or a module-level constant
                argument = child.args[0]
                name = argument.value if isinstance(argument, ast.Constant) else constants.get(getattr(argument, "id", None))
                if isinstance(name, str) and name.split(".")[0] == "repbend":
                    found.append((name, child.lineno, function))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, function) for alias in child.names
                             if alias.name.split(".")[0] == "repbend")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] == "repbend":
                    for alias in child.names:
                        submodule = f"{target}.{alias.name}"
                        found.append((submodule if submodule in MODULES else target, child.lineno, function))
            visit(child, inner)

    visit(tree, None)
    return found


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


# The one deliberate upward dependency: reading a config's loss section needs the
# registered methods' settings classes, so config imports the built-in methods' package by
# name when it reads one (a plugin registry: the methods register themselves).
UPWARD_ALLOWED = {("repbend.config", "repbend.methods"): "plugin discovery of the registered methods"}


def test_no_module_imports_a_higher_layer():
    wrong = []
    for module, path in MODULES.items():
        for target, line, _ in project_imports(module, path):
            if layer_of(target) > layer_of(module) and (module, target) not in UPWARD_ALLOWED:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} ({LAYERS[layer_of(module)][0]}) "
                             f"imports {target} ({LAYERS[layer_of(target)][0]}), a higher layer")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_project_imports_sit_at_module_level():
    lazy = []
    for module, path in MODULES.items():
        for target, line, function in project_imports(module, path):
            if function is not None and (module, function) not in LAZY_ALLOWED:
                lazy.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module}.{function} imports {target} "
                            "inside the function")
    assert not lazy, ("project imports inside functions (move them to the top, or list a deliberate one in "
                      "LAZY_ALLOWED with its reason):\n" + "\n".join(lazy))


def test_the_allow_list_names_only_lazy_imports_that_exist():
    present = {(module, function) for module, path in MODULES.items()
               for _, _, function in project_imports(module, path) if function is not None}
    assert set(LAZY_ALLOWED) <= present, sorted(set(LAZY_ALLOWED) - present)


def test_the_checker_sees_what_it_must():
    """The parser resolves relative imports, submodules named in ``from . import`` and
    imports nested in functions (a check of the checker, on the real files)."""
    cli = project_imports("repbend.cli", MODULES["repbend.cli"])
    assert ("repbend.commands.compare", "_compare") in {(target, function) for target, _, function in cli}
    attacks = {target for target, _, _ in project_imports("repbend.eval.attacks", MODULES["repbend.eval.attacks"])}
    assert {"repbend.registry", "repbend.types", "repbend.eval.attacks.simple"} <= attacks
    assert layer_of("repbend.data.splits") < layer_of("repbend.eval.judges.keywords") < layer_of("repbend.commands.data")
