"""Every image in images/ is built by `make images` and by the release workflow, for amd64
and arm64, pushed, and its digest pinned in the released chart. (The images themselves
are not built by the tests: that needs a container engine and a registry.)"""

from __future__ import annotations

import subprocess

import yaml
from chart_helpers import CHART, REPO

WORKFLOW = yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())
IMAGE_DIRS = sorted(p.parent.name for p in (REPO / "images").glob("*/Dockerfile"))
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def test_the_workflow_builds_every_image_for_both_platforms_and_pushes_it():
    job = WORKFLOW["jobs"]["images"]
    assert sorted(item["dir"] for item in job["strategy"]["matrix"]["include"]) == IMAGE_DIRS
    [build] = [step for step in job["steps"] if str(step.get("uses", "")).startswith("docker/build-push-action")]
    assert build["with"]["file"] == "images/${{ matrix.dir }}/Dockerfile"
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["with"]["push"] is True
    assert any("steps.build.outputs.digest" in step.get("run", "") for step in job["steps"])


def test_the_released_chart_pins_every_image_by_digest():
    script = next(step["run"] for step in WORKFLOW["jobs"]["chart"]["steps"] if "yq" in step.get("run", ""))
    for value in (".image.digest", ".serverImages.cpu", ".serverImages.gpu"):
        assert value in script


def test_make_images_builds_every_image_at_the_charts_app_version():
    commands = subprocess.run(["make", "-n", "images"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in IMAGE_DIRS:
        assert f"-f images/{name}/Dockerfile" in commands
    assert commands.count(f":{APP_VERSION} .") == len(IMAGE_DIRS)
