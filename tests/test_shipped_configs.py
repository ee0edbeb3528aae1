"""Every config in configs/ loads into its task's typed config and passes the range checks the CLI applies."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reidkit.config import load_config
from reidkit.training.config import check_config
from reidkit.training.tasks import task_for_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_loads_and_passes_the_checks(path):
    name = (yaml.safe_load(path.read_text()).get("model") or {}).get("name", "embedding")
    cfg = load_config(task_for_model(name).config_class, path)
    check_config(cfg)
