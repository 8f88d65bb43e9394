"""The layout's promises, checked on the source: the core is folders by layer and every
import points down them, the core never imports Ray and only the serving layer and above
see the HTTP contract, no module imports itself back through others (imports inside
functions count), no source file grows past the line limit, and the ingress process loads
no model library."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("echorag", "deployments")
MAX_LINES = 400

# The core's layers, lowest first: a module may import its own layer and the ones below.
FOUNDATION = ("echorag.config", "echorag.types", "echorag.korean", "echorag.documents")
LAYERS = (
    FOUNDATION,
    ("echorag.identity",),
    ("echorag.answering",),
    ("echorag.models",),
    ("echorag.retrieval",),
    ("echorag.inversion",),
    ("echorag.serving",),
    ("echorag.evaluation",),
    ("echorag.learning",),
    ("echorag.cli",),
    ("deployments",),
)
HTTP_SCHEMAS = "echorag.serving.schemas"


def _layer(name: str) -> int | None:
    for number, members in enumerate(LAYERS):
        if any(name == member or name.startswith(member + ".") for member in members):
            return number
    return None


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``path`` imports anywhere in its body (``from x import y``
    counts ``x.y`` when that is a module, else ``x``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up from this module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_among_project_modules():
    assert _cycles(_graph()) == []


def test_the_core_is_folders_named_for_its_layers():
    """Beside the foundation, every core module lives in a layer's folder."""
    loose = sorted(name for name in _modules() if name.startswith("echorag.") and _layer(name) is None)
    assert loose == []
    top = {p.stem for p in (REPO / "echorag").glob("*.py")} - {"__init__"}
    assert {f"echorag.{stem}" for stem in top} == set(FOUNDATION)


def test_imports_point_down_the_layers():
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in _graph().items() for target in targets
        if _layer(source) is not None and _layer(target) is not None and _layer(target) > _layer(source)
    )
    assert upward == []


def test_only_the_serving_layer_and_above_see_the_http_contract():
    """Retrieval, answering, models and the learning loop exchange core types
    (``echorag.types``), never request or response bodies."""
    allowed = tuple(_layer(layer) for layer in ("echorag.serving", "echorag.evaluation", "echorag.cli", "deployments"))
    readers = sorted(name for name, targets in _graph().items() if HTTP_SCHEMAS in targets and _layer(name) not in allowed)
    assert readers == []


def test_the_core_never_imports_ray():
    offenders = [
        str(path.relative_to(REPO)) for name, path in _modules().items()
        if name.startswith("echorag") and any(
            isinstance(node, (ast.Import, ast.ImportFrom))
            and any((getattr(node, "module", None) or alias.name).split(".")[0] == "ray" for alias in node.names)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        )
    ]
    assert offenders == []


def test_no_source_file_is_over_the_line_limit():
    sources = [p for d in ("echorag", "deployments", "bench", "tests") for p in (REPO / d).rglob("*.py")]
    sources += list((REPO / "echorag" / "ui").glob("*.js"))
    long = {str(p.relative_to(REPO)): n for p in sources if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_learning_loop_calls_are_typed_not_named_by_strings():
    text = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "deployments").rglob("*.py"))
    for pattern in ("LOOP_METHODS", ".call.remote(", "self._loop("):
        assert pattern not in text


def test_the_ingress_imports_no_model_library():
    code = (
        "import sys, deployments.ingress; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_models_and_engines_never_import_training_code():
    """Building or serving a model needs the chat encoding (echorag.models.chat_tokens), not the
    fine-tuning loop: the training layer sits above them."""
    graph = _graph()
    serving = ("echorag.models.tiny_model", "echorag.models.small_model", "echorag.models.generation", "echorag.models.engine",
               "echorag.models.chat_tokens", "deployments.generator")
    training = {"echorag.learning.training", "echorag.learning.evaluation", "echorag.learning.dataset", "deployments.training"}
    assert {name: sorted(graph[name] & training) for name in serving} == {name: [] for name in serving}
