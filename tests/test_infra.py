"""The deployment files stay in step with the code: they parse, their callic command lines are
accepted by the CLI's own parser, and the Dockerfile copies folders that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from jobs.cli import build_parser

INFRA = Path(__file__).resolve().parents[1] / "infra"


def test_rayjob_runs_a_valid_archive_command_on_gpu_workers():
    spec = yaml.safe_load((INFRA / "rayjob.yaml").read_text())
    assert spec["apiVersion"] == "ray.io/v1" and spec["kind"] == "RayJob"
    argv = shlex.split(spec["spec"]["entrypoint"])
    assert argv[0] == "callic"
    args = build_parser().parse_args(argv[1:])  # exits (fails the test) on an unknown flag
    assert args.command == "archive" and args.address == "auto"
    [group] = spec["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    [container] = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_cluster_launcher_config():
    cfg = yaml.safe_load((INFRA / "cluster.yaml").read_text())
    nodes = cfg["available_node_types"]
    assert cfg["head_node_type"] in nodes
    assert any(n["resources"].get("GPU") == 1 for n in nodes.values())
    assert (
        cfg["docker"]["image"]
        == yaml.safe_load((INFRA / "rayjob.yaml").read_text())["spec"]["rayClusterSpec"]["headGroupSpec"]["template"][
            "spec"
        ]["containers"][0]["image"]
    )


def test_dockerfile_copies_what_exists():
    text = (INFRA / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, flags=re.M)
    root = INFRA.parent
    for line in copied:
        for name in line.split():
            assert (root / name).exists(), name
    assert "callic --help" in text
