"""Fixtures of tests/serve: the synthetic models (built once) and a served confident model."""

from __future__ import annotations

import pytest

from loopcli.serve import load_server
from servekit import confident_model, running, tool_model


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-models")
    return {"confident": confident_model(root), "tool": tool_model(root)}


@pytest.fixture(scope="module")
def confident_url(models):
    server = load_server(models["confident"], ctx=512, parallel=3, queue=64, api_key="sekrit",
                         name="tiny", threads=1)
    with running(server) as url:
        yield url, server
