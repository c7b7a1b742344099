"""The shape of jaxdd's imports, read from the source with `ast` (nothing is imported): no import cycles, no
module outside the CLI imports the CLI, modules stay under 450 lines, every module is named in
docs/architecture.md's module table, and function-local jaxdd imports are few and say why."""

import ast
import io
import os
import re
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jaxdd")
ARCHITECTURE = os.path.join(ROOT, "docs", "architecture.md")
MAX_LINES = 450
MAX_LOCAL_IMPORTS = 5


def _modules():
    """{dotted name: path} of every module under jaxdd/ (a package as its name, from its __init__.py)."""
    found = {}
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        for f in sorted(files):
            if f.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = os.path.join(folder, f)
    return found


MODULES = _modules()


def _is_package(name):
    return MODULES[name].endswith("__init__.py")


def _imports(name):
    """[(target module, line, function-local)] of every jaxdd import in module `name`, relative ones resolved.
    `from P import x` counts as an import of P.x where that is a module, else of P."""
    path = MODULES[name]
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = name if _is_package(name) else name.rpartition(".")[0]
    found = []

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "jaxdd" or alias.name.startswith("jaxdd."):
                        found.append((alias.name, child.lineno, local))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                if module == "jaxdd" or module.startswith("jaxdd."):
                    for alias in child.names:
                        sub = f"{module}.{alias.name}"
                        found.append((sub if sub in MODULES else module, child.lineno, local))
            visit(child, inner)

    visit(tree, False)
    return [(target, line, local) for target, line, local in found if target != name]


IMPORTS = {name: _imports(name) for name in MODULES}


def _cycles():
    """The strongly connected components of more than one module (Tarjan), each sorted, and self-imports."""
    graph = {n: sorted({t for t, _, _ in IMPORTS[n] if t in MODULES}) for n in MODULES}
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                sccs.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(sccs)


def _is_cli(name):
    return name == "jaxdd.cli" or name.startswith("jaxdd.cli.")


def test_no_import_cycles():
    cycles = _cycles()
    edges = [sorted({f"{n} -> {t}" for n in c for t, _, _ in IMPORTS[n] if t in c}) for c in cycles]
    assert not cycles, "import cycles among jaxdd modules (strongly connected components): " + "; ".join(
        "{" + ", ".join(c) + "} by " + ", ".join(e) for c, e in zip(cycles, edges))


def test_only_the_cli_imports_the_cli():
    offenders = sorted({f"{name} (line {line})" for name in MODULES if not _is_cli(name) and name != "jaxdd.__main__"
                        for target, line, _ in IMPORTS[name] if _is_cli(target)})
    assert not offenders, "modules outside the CLI import jaxdd.cli: " + ", ".join(offenders)


def test_modules_are_short():
    lengths = {name: len(open(path, encoding="utf-8").read().splitlines()) for name, path in MODULES.items()}
    offenders = [f"{os.path.relpath(MODULES[n], ROOT)} ({k} lines)" for n, k in sorted(lengths.items())
                 if k > MAX_LINES]
    assert not offenders, f"modules over {MAX_LINES} lines: " + ", ".join(offenders)


def _table_names():
    """Dotted module names in the first column of docs/architecture.md's module table: `a/b.py`, `jaxdd.a.b`,
    a package as `a/` or `a/__init__.py` (paths relative to jaxdd/, or starting with jaxdd/)."""
    text = open(ARCHITECTURE, encoding="utf-8").read()
    names, in_table = set(), False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if cells and cells[0].lower() == "module":
            in_table = True
            continue
        if not cells:
            in_table = False
        if not in_table or set(cells[0]) <= set("-: "):
            continue
        for token in re.findall(r"`([^`]+)`", cells[0]):
            token = token.strip()
            if token.endswith((".py", "/")) or "/" in token:
                path = token[len("jaxdd/"):] if token.startswith("jaxdd/") else token
                if path.endswith("/"):
                    path += "__init__.py"
                parts = ["jaxdd"] + [p for p in path[:-3].split("/") if p]
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                names.add(".".join(parts))
            elif token == "jaxdd" or token.startswith("jaxdd."):
                names.add(token)
    return names


def test_every_module_is_in_the_architecture_table():
    named = _table_names()
    missing = [os.path.relpath(MODULES[n], PACKAGE) for n in sorted(MODULES) if n not in named]
    assert not missing, "modules missing from docs/architecture.md's module table: " + ", ".join(missing)


def _comment_lines(path):
    with open(path, encoding="utf-8") as f:
        return {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(f.read()).readline)
                if tok.type == tokenize.COMMENT}


def test_function_local_jaxdd_imports_are_few_and_say_why():
    local = [(name, line) for name in sorted(MODULES) for _, line, is_local in IMPORTS[name] if is_local]
    local = sorted(set(local))
    where = [f"{os.path.relpath(MODULES[n], ROOT)}:{line}" for n, line in local]
    assert len(local) <= MAX_LOCAL_IMPORTS, (
        f"{len(local)} function-local jaxdd imports (at most {MAX_LOCAL_IMPORTS}): " + ", ".join(where))
    comments = {n: _comment_lines(MODULES[n]) for n, _ in local}
    silent = [w for (n, line), w in zip(local, where) if line not in comments[n] and line - 1 not in comments[n]]
    assert not silent, "function-local jaxdd imports without a comment on their line or the line above: " + ", ".join(
        silent)
