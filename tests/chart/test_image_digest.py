"""The operator image can be pinned by digest: no tag is appended to a digest reference."""

from __future__ import annotations

import pytest
from chart_helpers import HelmError, one

DIGEST = "sha256:" + "ab" * 32


def operator_image(helm, *values: str) -> str:
    return one(helm.template(set_values=values), "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]


def test_a_digest_pins_the_image_without_the_tag(helm):
    assert operator_image(helm, f'image.digest="{DIGEST}"', 'image.tag="9.9.9"') == (
        f"ghcr.io/trail-k8s/trail-operator@{DIGEST}"
    )


def test_a_repository_that_carries_a_digest_is_used_as_it_is(helm):
    """It used to render as ...@sha256:...:0.1.0, which no registry serves."""
    pinned = f"registry.example.com/trail/trail-operator@{DIGEST}"
    assert operator_image(helm, f'image.repository="{pinned}"') == pinned


def test_without_a_digest_the_tag_defaults_to_the_app_version(helm):
    assert operator_image(helm) == "ghcr.io/trail-k8s/trail-operator:0.1.0"


def test_a_malformed_digest_is_refused(helm):
    with pytest.raises(HelmError) as caught:
        operator_image(helm, 'image.digest="sha256:xyz"')
    assert "/image/digest" in caught.value.stderr
