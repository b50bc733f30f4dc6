"""The dependency direction (pyproject.toml's import-linter contracts) holds, and the contracts
can fail: a copy of the tree with one wrong-way import, or one cycle, breaks them."""

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("marketplace", "api", "executor", "recon", "configs", "infra", "webhooks")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def lint_imports(where: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(where / "pyproject.toml"), "--no-cache"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree_copy(tmp_path) -> Path:
    """The project's packages and contracts, copied where a test may break them."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(tree: Path, module: str, line: str) -> None:
    path = tree / (module.replace(".", "/") + ".py")
    path.write_text(f"{line}  # noqa\n" + path.read_text())


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_module_of_a_layered_package_is_in_a_layer():
    """import-linter checks only the modules a layer names: a new module left out of every
    layer would be unconstrained, so each package split across layers must name them all."""
    [layers] = [c["layers"] for c in contracts() if c["type"] == "layers"]
    named = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    for package in ("api", "executor"):
        if package in named:
            continue
        children = {
            f"{package}.{path.stem if path.is_file() else path.name}"
            for path in (ROOT / package).iterdir()
            if (path.suffix == ".py" and path.stem != "__init__")
            or (path.is_dir() and (path / "__init__.py").exists())
        }
        assert children <= named, f"not in any layer: {sorted(children - named)}"


def test_a_wrong_way_import_breaks_the_layers(tree_copy):
    add_import(tree_copy, "configs.live", "import api.models")

    result = lint_imports(tree_copy)

    assert result.returncode != 0
    assert "Layers: project > processes" in result.stdout and "BROKEN" in result.stdout
    assert "configs.live -> api.models" in result.stdout


def test_a_process_reaching_into_another_breaks_independence(tree_copy):
    add_import(tree_copy, "api.http.views", "import recon.sweeps")

    result = lint_imports(tree_copy)

    assert result.returncode != 0
    assert "api.http is not allowed to import recon" in result.stdout


def test_a_cycle_between_modules_of_a_package_breaks_the_contract(tree_copy):
    add_import(tree_copy, "api.services.accounts", "from api.services import settlement")

    result = lint_imports(tree_copy)

    assert result.returncode != 0
    assert "No cycles are allowed in api.services" in result.stdout


# The domain's stored data, and the modules that may query or write it directly.
DOMAIN_STORES = {"ServiceRequest", "LedgerEntry", "Account", "UsageRecord"}
DOMAIN_MODULES = ("api/services/", "api/selectors.py", "api/health.py", "api/metrics.py")


def store_accesses(path: Path) -> list[str]:
    """`Model.objects…` and `Model._get_collection()` of a domain model in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("objects", "_get_collection", "drop_collection")
            and isinstance(node.value, ast.Name)
            and node.value.id in DOMAIN_STORES
        ):
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
            found.append(f"{where}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_only_the_domain_reads_or_writes_requests_and_the_ledger():
    """Processes (views, admin, commands, executor jobs, recon) call the domain's services and
    selectors: no module outside them queries a request document or the ledger itself."""
    outside = [
        access
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts
        and not str(path.relative_to(ROOT)).startswith(DOMAIN_MODULES)
        for access in store_accesses(path)
    ]
    assert outside == []


def test_the_store_access_check_sees_a_query(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from api.documents import ServiceRequest\nServiceRequest.objects(id=1)\n")
    assert [a.split(" ")[1] for a in store_accesses(sneaky)] == ["ServiceRequest.objects"]
