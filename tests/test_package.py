"""The package's seams: what the core imports, what it depends on, and that it runs without colbert-ai."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pooledir"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """pooledir modules (the service among them) ``path`` imports.

    ``from pkg import sub`` counts as pkg.sub when sub is a module, and ``from pooledir import Name`` as the
    module the package's lazy ``__getattr__`` loads for ``Name``.
    """
    from pooledir import _EXPORTS  # cheap: the package imports nothing heavy

    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
            if node.module == "pooledir":
                out |= {_EXPORTS[a.name] for a in node.names if a.name in _EXPORTS}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in out if m in modules}


def import_graph() -> dict[str, set[str]]:
    """Each module of pooledir/ -> the modules of pooledir/ it imports anywhere: at the top, inside functions, and
    under ``TYPE_CHECKING`` (a type that points up is a dependency that points up)."""
    return {module_name(p): imports(p, top_level_only=False) for p in PACKAGE.rglob("*.py")}


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)


def test_core_never_imports_evaluation_or_service():
    """The library sits below both: only the CLI reaches evaluation (its eval commands) and the service (serve),
    inside its commands; the service never reaches evaluation, nor evaluation the service."""
    checked = 0
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        found = imports(path, top_level_only=False)
        evaluation = {m for m in found if m.startswith("pooledir.evaluation")}
        service = {m for m in found if m == "pooledir.service" or m.startswith("pooledir.service.")}
        if name.startswith("pooledir.cli"):
            continue
        checked += 1
        if not name.startswith("pooledir.evaluation"):
            assert not evaluation, f"{name} imports {evaluation}"
        if not name.startswith("pooledir.service"):
            assert not service, f"{name} imports {service}"
    assert checked > 50  # the walk sees the package, the service among it
    assert "pooledir.service.main" in import_graph()["pooledir.cli.serve"]  # and sees the CLI's lazy imports


def test_the_service_installs_inside_the_package_not_as_a_top_level_module():
    """Issue 18, item 7: a top-level ``service`` package in site-packages collides with anyone else's."""
    tomllib = pytest.importorskip("tomllib")
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert found["include"] == ["pooledir*"]
    assert not (ROOT / "service").exists() and (PACKAGE / "service" / "main.py").is_file()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_no_import_cycles():
    """None among the modules of pooledir/ (the service among them), imports inside functions counted.

    A lazy import only defers a dependency: the CLI importing the library inside a command points down
    and is fine, but two modules that import each other (at any level) are one module in two files.
    """
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])
    lazy = {m: deps for m, deps in graph.items() if m.startswith("pooledir")}
    evaluation = {m: {n for n in deps if n.startswith("pooledir.evaluation")} for m, deps in lazy.items()}
    assert find_cycle({m: deps for m, deps in evaluation.items() if m.startswith("pooledir.evaluation")}) is None
    # and the core reaches evaluation only from the CLI, which evaluation never imports
    assert not any(
        m.startswith("pooledir.evaluation") and any(d.startswith("pooledir.cli") for d in deps)
        for m, deps in lazy.items()
    )
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]  # the checker itself finds one


def test_the_storage_engine_never_imports_the_facade():
    """pooledir/index/ sits below PooledIndex: it gets what it needs passed in, at any import level."""
    graph = import_graph()
    engine = [m for m in graph if m.startswith("pooledir.index")]
    assert "pooledir.index.detached" in engine  # the walk sees the package
    assert not [m for m in engine if "pooledir.pooled_index" in graph[m]]


#: the longest function body (docstring left out) a module of pooledir/ (the service among them) may hold
MAX_BODY_LINES = 60


def body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from a function's first statement after its docstring to its end: a typer signature is not counted."""
    body = fn.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return (fn.end_lineno or fn.lineno) - body[0].lineno + 1


def test_body_lines_counts_the_body_not_the_signature_or_docstring():
    tree = ast.parse('def f(\n    a: int = 1,\n    b: int = 2,\n) -> None:\n    """Doc."""\n    x = a\n    return x\n')
    assert body_lines(tree.body[0]) == 2


def test_no_function_body_is_over_60_lines():
    """Issue 18's target: functions short enough to read at once (the CLI's typer signatures aside)."""
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({body_lines(node)} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body_lines(node) > MAX_BODY_LINES
    ]
    assert not long, "split these into steps with one job each: " + "; ".join(long)


@pytest.mark.parametrize("module", ["passages", "hybrid"])
def test_the_search_modes_reach_no_private_member_of_the_index_or_encoder(module):
    """They work through what the facade passes in (Protocols, callables), not its or the encoder's internals."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    private = {
        f"{ast.unparse(n.value)}.{n.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
    }
    assert not private


def test_importing_the_library_and_cli_loads_no_evaluation_colbert_or_service():
    r = run_python(
        """
        import json, sys
        import pooledir, pooledir.cli, pooledir.pooled_index, pooledir.encoder, pooledir.corpus, pooledir.pooling
        loaded = ("pooledir.evaluation", "colbert", "pooledir.service", "service")
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(loaded))))
        """
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_every_public_name_is_what_it_names_even_after_its_module_loaded():
    r = run_python(
        """
        import pooledir, pooledir.search, pooledir.encoder  # load submodules first, as a user's code may
        from pooledir import maxsim
        bad = [n for n in pooledir.__all__ if type(getattr(pooledir, n)).__name__ == "module"]
        print(bad, callable(maxsim))
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "True"]


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_importing_the_library_makes_openmp_wait_passively_unless_told_otherwise(preset):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    r = subprocess.run(
        [sys.executable, "-c", "import os, pooledir; print(os.environ['OMP_WAIT_POLICY'])"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (preset or "PASSIVE")


def test_runtime_dependencies_leave_colbert_ai_to_the_extras():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    assert "colbert" not in runtime and "ninja" not in runtime
    for extra in ("eval", "dev"):
        assert any(d.startswith("colbert-ai") for d in project["optional-dependencies"][extra])


def test_index_and_search_with_colbert_ai_unimportable(tiny_ckpt, tmp_path):
    r = run_python(
        f"""
        import sys
        sys.modules["colbert"] = None  # `import colbert` now raises ImportError
        from pooledir import ColBERTEncoder, Document, IndexConfig, PooledIndex
        encoder = ColBERTEncoder({str(tiny_ckpt)!r}, device="cpu")
        texts = ["cancer cells grow", "vitamin d and bone", "heart"]
        docs = [Document(f"d{{i}}", t) for i, t in enumerate(texts)]
        with PooledIndex.create({str(tmp_path / "idx")!r}, config=IndexConfig(backend="flat"), encoder=encoder) as idx:
            idx.add(docs)
            print(*[h.id for h in idx.search("bone vitamin", k=3)[0]])
        """
    )
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == ["d0", "d1", "d2"]  # the tiny checkpoint is random: any order


def test_library_error_messages_name_no_cli_flags_or_make_variables():
    """A library user has no flags to pass: messages say the value, the limit and the fix in library terms."""
    import re

    pattern = re.compile(r"(?<![\w-])--[a-z]|\b(CORPUS|LIMIT|DEMO|CKPT|DATASETS)=")
    found = []
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:  # the CLI may name its own flags
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for const in ast.walk(node.exc):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        text = const.value.replace("pip install --", "pip install ")  # pip's own flags are fine
                        if pattern.search(text):
                            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {const.value!r}")
    assert found == []


def _attribute_reads(path: Path, attr: str) -> list[int]:
    """Lines where ``<expr>.attr`` is read off anything but ``self`` (an object's own attribute is its business)."""
    return [
        n.lineno
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Attribute)
        and n.attr == attr
        and not (isinstance(n.value, ast.Name) and n.value.id == "self")
    ]


def test_the_storage_engine_is_read_only_through_the_facade():
    """Issue 18: nothing outside pooled_index.py reaches the engine under a PooledIndex (``folder``/``_folder``).

    Callers use its queries (``stats()``, ``doc_store``, ``quantizer``, ``row_ids()``, ``known_ids()``);
    the white-box tests of the engine itself reach it through ``tests/engine.py`` only.
    """
    files = [p for d in ("pooledir", "eval", "tests") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 100
    reads = {
        attr: {str(p.relative_to(ROOT)) for p in files if _attribute_reads(p, attr)} for attr in ("folder", "_folder")
    }
    # eval/search_study.py studies the engine's own search lanes and eval/format_study.py compares the engine's
    # stored vectors with its probe's: white-box readers, like tests/engine.py
    white_box = {"tests/engine.py", "eval/search_study.py", "eval/format_study.py"}
    assert reads["_folder"] <= {"pooledir/pooled_index.py", *white_box}, reads["_folder"]
    assert reads["folder"] == set(), reads["folder"]
    assert "tests/engine.py" in reads["_folder"]  # the walk sees a read


def test_the_type_checker_config_names_modules_that_exist():
    """Every file mypy checks and every module it checks strictly is there (a moved module drops out silently)."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert [f for f in cfg["files"] if not (ROOT / f).is_file()] == []
    strict = [m for o in cfg["overrides"] if o.get("disallow_untyped_defs") for m in o["module"]]
    assert "pooledir.pooled_index" in strict
    missing = [
        m
        for m in strict
        if not (ROOT / (m.replace(".", "/") + ".py")).is_file() and not (ROOT / m.replace(".", "/")).is_dir()
    ]
    assert missing == []
    assert {f"pooledir/{m.removeprefix('pooledir.').replace('.', '/')}.py" for m in strict if m != "pooledir"} <= {
        *cfg["files"],
        *(f.replace("/__init__.py", ".py") for f in cfg["files"]),
    }
