"""Dockerfile.gpu and Dockerfile.lambda, checked without a Docker engine (none is available here):

- every COPY source exists and passes .dockerignore (what `docker build` would send);
- the entry points resolve: ENTRYPOINT/CMD/HEALTHCHECK name modules and console scripts that
  exist and accept the arguments given;
- the pins agree with the rest of the repository (torch with scripts/setup.sh and this venv,
  awslambdaric with the dev extra, the CUDA index with the CUDA base image);
- the install steps that need no CUDA run here as in the image: the requirements list the image
  derives from pyproject.toml is satisfied by this (CI's) environment, and the package built from
  the Docker build context carries the entry point and data files the image runs on.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile.gpu", "Dockerfile.lambda"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- a small Dockerfile reader --------------------------------------------------------------------


@dataclass
class Instruction:
    name: str  # upper case: FROM, RUN, COPY, ...
    args: str
    line: int

    def json_args(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


def parse_dockerfile(path: Path) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # comment lines inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        name, _, args = text.partition(" ")
        instructions.append(Instruction(name.upper(), args.strip(), start))
    assert not pending, f"{path.name}: the last instruction ends with a line continuation"
    return instructions


def args_of(path: Path) -> dict[str, str]:
    """ARG defaults, global and per stage."""
    found = {}
    for instruction in parse_dockerfile(path):
        if instruction.name == "ARG" and "=" in instruction.args:
            key, _, value = instruction.args.partition("=")
            found[key.strip()] = value.strip()
    return found


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def last(path: Path, name: str) -> Instruction:
    found = [i for i in parse_dockerfile(path) if i.name == name]
    assert found, f"{path.name} has no {name}"
    return found[-1]


def pip_installs(path: Path) -> list[list[str]]:
    """The argument lists of every `pip install` in RUN instructions, with ARGs expanded."""
    values = args_of(path)
    installs = []
    for instruction in parse_dockerfile(path):
        if instruction.name != "RUN":
            continue
        command: list[str] = []
        for word in [*shlex.split(expand(instruction.args, values)), "&&"]:
            if word not in ("&&", ";", "||"):
                command.append(word)
                continue
            if command[:2] == ["pip", "install"]:
                installs.append(command[2:])
            command = []
    return installs


# --- .dockerignore ----------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"
                i += 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:] if exception else line
        rules.append((exception, _pattern_regex(pattern.strip("/"))))
    return rules


def in_build_context(relative: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for exception, regex in dockerignore_rules():
        if any(regex.match(c) for c in candidates):
            included = exception
    return included


def build_context(into: Path) -> Path:
    """A copy of what `docker build .` sends: the repository filtered by .dockerignore."""
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith((".git/", ".venv/")) or relative in (".git", ".venv"):
            continue
        if path.is_file() and in_build_context(relative):
            target = into / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return into


# --- tests ------------------------------------------------------------------------------------------


def test_dockerignore_reader_follows_dockers_rules() -> None:
    # Sanity of the helper itself, on the repository's own file.
    assert in_build_context("pyproject.toml")
    assert in_build_context("comfyd/lambda_handler.py")
    assert not in_build_context("comfyd/__pycache__/settings.cpython-311.pyc")
    assert not in_build_context(".venv/bin/python")
    assert not in_build_context("models/checkpoints/v1-5-pruned-emaonly.safetensors")
    assert not in_build_context("comfyd.toml")
    assert not in_build_context("tests/deploy/test_dockerfiles.py")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copy_source_exists_and_reaches_the_build(dockerfile: str) -> None:
    copies = [i for i in parse_dockerfile(ROOT / dockerfile) if i.name in ("COPY", "ADD")]
    assert copies
    for instruction in copies:
        words = [w for w in shlex.split(instruction.args) if not w.startswith("--")]
        assert not any(w.startswith("--from") for w in shlex.split(instruction.args)), "single-stage builds"
        for source in words[:-1]:
            path = ROOT / source
            assert path.exists(), f"{dockerfile}:{instruction.line}: COPY source {source} does not exist"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
            assert files, f"{dockerfile}:{instruction.line}: {source} is empty"
            excluded = [f.relative_to(ROOT).as_posix() for f in files if not in_build_context(f.relative_to(ROOT).as_posix())]
            assert excluded == [], f"{dockerfile}:{instruction.line}: .dockerignore drops {excluded[:5]}"


def test_gpu_image_entry_points_resolve() -> None:
    path = ROOT / "Dockerfile.gpu"
    entrypoint = last(path, "ENTRYPOINT").json_args()
    command = last(path, "CMD").json_args()
    assert entrypoint == ["/usr/bin/tini", "--"]  # installed by the apt-get line
    assert "tini" in next(i.args for i in parse_dockerfile(path) if i.name == "RUN" and "apt-get install" in i.args)
    # `comfyd` is the package's console script, pointing at comfyd.cli:main...
    assert command[0] == "comfyd"
    target = PYPROJECT["project"]["scripts"]["comfyd"]
    module_name, _, function = target.partition(":")
    cli = importlib.import_module(module_name)
    assert callable(getattr(cli, function))
    # ...which accepts the image's command and the documented worker variant.
    parser = cli.build_parser()
    serve = parser.parse_args(command[1:])
    assert serve.func is cli.cmd_serve and serve.host == "0.0.0.0"
    assert parser.parse_args(["worker"]).func is cli.cmd_worker
    healthcheck = last(path, "HEALTHCHECK").args
    words = json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())
    assert words[:2] == ["python", "-m"]
    module = importlib.import_module(words[2])
    assert callable(module.main)
    # The health probe goes to the port the image exposes and the server listens on.
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(i.args for i in parse_dockerfile(path) if i.name == "ENV")))
    assert last(path, "EXPOSE").args == env["COMFYD_PORT"] == "8188"


def test_lambda_image_entry_points_resolve() -> None:
    path = ROOT / "Dockerfile.lambda"
    entrypoint = last(path, "ENTRYPOINT").json_args()
    (handler_path,) = last(path, "CMD").json_args()
    assert entrypoint == ["python", "-m", "awslambdaric"]
    assert importlib.util.find_spec("awslambdaric.__main__") is not None
    module_name, _, function = handler_path.rpartition(".")
    handler = getattr(importlib.import_module(module_name), function)
    assert callable(handler)
    # The template runs this image with the same handler.
    template = (ROOT / "deploy" / "template.yaml").read_text()
    assert template.count(f"Command: [{handler_path}]") == 2


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_comfyd_variables_in_images_are_settings(dockerfile: str) -> None:
    from comfyd.settings import Settings

    text = " ".join(i.args for i in parse_dockerfile(ROOT / dockerfile) if i.name == "ENV")
    names = set(re.findall(r"\b(COMFYD_[A-Z0-9_]+)=", text))
    assert "COMFYD_MODELS_DIR" in names
    assert {n for n in names if n.removeprefix("COMFYD_").lower() not in Settings.model_fields} == set()


def test_torch_pins_agree_with_setup_script_and_this_environment() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    setup_version = re.search(r"TORCH_VERSION=\$\{COMFYD_TORCH_VERSION:-([\w.]+)\}", setup).group(1)
    installed = importlib.metadata.version("torch").split("+")[0]
    gpu, lam = args_of(ROOT / "Dockerfile.gpu"), args_of(ROOT / "Dockerfile.lambda")
    assert gpu["TORCH_VERSION"] == lam["TORCH_VERSION"] == setup_version == installed
    # The CUDA build matches the CUDA base image: cu128 <-> nvidia/cuda:12.8.x.
    cuda = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", gpu["TORCH_INDEX_URL"])
    assert cuda, gpu["TORCH_INDEX_URL"]
    assert re.match(rf"nvidia/cuda:{cuda.group(1)}\.{cuda.group(2)}\.\d+-", gpu["CUDA_BASE_IMAGE"])
    assert lam["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    for dockerfile in DOCKERFILES:
        torch_installs = [words for words in pip_installs(ROOT / dockerfile) if any(w.startswith("torch") for w in words)]
        assert torch_installs == [[f"torch=={setup_version}", "--index-url", args_of(ROOT / dockerfile)["TORCH_INDEX_URL"]]]


def test_awslambdaric_pin_satisfies_the_dev_extra() -> None:
    pinned = args_of(ROOT / "Dockerfile.lambda")["AWSLAMBDARIC_VERSION"]
    spec = next(Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"] if r.startswith("awslambdaric"))
    assert spec.specifier.contains(pinned)
    assert importlib.metadata.version("awslambdaric") == pinned  # what the smoke test runs


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_pip_installs_only_torch_the_runtime_client_and_the_package(dockerfile: str) -> None:
    # No package list of its own that could drift from pyproject.toml.
    allowed = re.compile(r"^(torch==[\d.]+|awslambdaric==[\d.]+|-r|/tmp/requirements\.txt|-c|/src/constraints\.txt|--no-deps|/src|--index-url|https://download\.pytorch\.org/whl/\w+)$")
    for words in pip_installs(ROOT / dockerfile):
        assert all(allowed.match(w) for w in words), words
    assert ["--no-deps", "/src"] in pip_installs(ROOT / dockerfile)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_requirements_step_lists_pyprojects_dependencies_and_ci_satisfies_them(dockerfile: str, tmp_path: Path) -> None:
    run = next(i for i in parse_dockerfile(ROOT / dockerfile) if i.name == "RUN" and "tomllib" in i.args)
    command = shlex.split(run.args.split(">", 1)[0])  # python -c "<script>"  (> /tmp/requirements.txt)
    assert command[:2] == ["python", "-c"]
    script = command[2].replace("/src/pyproject.toml", str(ROOT / "pyproject.toml"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    requirements = proc.stdout.splitlines()
    assert requirements == PYPROJECT["project"]["dependencies"]
    assert not any(Requirement(r).name == "torch" for r in requirements)
    listed = tmp_path / "requirements.txt"
    listed.write_text(proc.stdout)
    # Offline: every requirement must already be satisfied by this environment (CI's).
    check = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--quiet", "-r", str(listed)],
        capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_package_built_from_the_build_context_has_what_the_images_run(tmp_path: Path) -> None:
    """`pip install --no-deps /src` as in both images: build the wheel from exactly the files
    the build context holds (setuptools, no network), then look inside."""
    context = build_context(tmp_path / "context")
    src = tmp_path / "src"
    src.mkdir()
    for copy in (i for i in parse_dockerfile(ROOT / "Dockerfile.gpu") if i.name == "COPY"):
        *sources, _ = shlex.split(copy.args)
        for source in sources:
            origin = context / source
            assert origin.exists(), f"COPY source {source} is not in the build context"
            if origin.is_dir():
                shutil.copytree(origin, src / source)
            else:
                shutil.copy2(origin, src / source)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("comfyd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("comfyd/cli.py", "comfyd/server.py", "comfyd/lambda_handler.py", "comfyd/lambda_asgi.py",
                   "comfyd/healthcheck.py", "comfyd/warmup.py", "comfyd/workflows/default_api.json",
                   "comfyd/models/configs/clip_tokenizer/vocab.json"):
        assert module in names, module
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "comfyd = comfyd.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (ROOT / "deploy" / "comfyd.service").read_text()
    exec_start = re.search(r"^ExecStart=(\S+) (.*)$", unit, re.M)
    assert exec_start and exec_start.group(1) == "/opt/comfyd/bin/comfyd"
    from comfyd.cli import build_parser, cmd_serve

    assert build_parser().parse_args(shlex.split(exec_start.group(2))).func is cmd_serve
    from comfyd.settings import Settings

    variables = set(re.findall(r"^Environment=(COMFYD_\w+)=", unit, re.M))
    assert variables and {v for v in variables if v.removeprefix("COMFYD_").lower() not in Settings.model_fields} == set()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax was not verified")
    # Verify a copy whose program and environment file exist on this machine.
    local = unit.replace("/opt/comfyd/bin/comfyd", str(Path(sys.executable).with_name("comfyd")))
    local = re.sub(r"^EnvironmentFile=.*$", f"EnvironmentFile=-{tmp_path}/comfyd.env", local, flags=re.M)
    (tmp_path / "comfyd.service").write_text(local)
    proc = subprocess.run([analyze, "verify", str(tmp_path / "comfyd.service")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_images_install_the_versions_ci_tested() -> None:
    """constraints.txt is CI's environment (scripts/write_constraints.py): every pin is the
    version installed here, every runtime dependency is pinned, and the images and
    scripts/setup.sh install with it."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_canonical(name)] = version
    installed = {_canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    drift = {name: (version, installed.get(name)) for name, version in pins.items() if installed.get(name) != version}
    assert drift == {}, "constraints.txt differs from CI's environment: run scripts/write_constraints.py"
    unpinned = [r for r in PYPROJECT["project"]["dependencies"] if _canonical(Requirement(r).name) not in pins]
    assert unpinned == []
    assert "torch" not in pins  # its build is pinned per image
    for dockerfile in DOCKERFILES:
        requirement_installs = [w for w in pip_installs(ROOT / dockerfile) if "/tmp/requirements.txt" in w]
        assert requirement_installs and all(["-c", "/src/constraints.txt"] == w[:2] for w in requirement_installs)
    assert "-c constraints.txt -e '.[dev]'" in (ROOT / "scripts" / "setup.sh").read_text()


def test_images_run_the_python_ci_tests() -> None:
    tested = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert args_of(ROOT / "Dockerfile.gpu")["PYTHON_VERSION"] == tested
    assert args_of(ROOT / "Dockerfile.lambda")["PYTHON_IMAGE"].startswith(f"python:{tested}-")
