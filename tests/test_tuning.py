"""The Triton tuner's choices kept on disk across processes (a later process neither times nor
compiles the losing candidates again), keyed so that another GPU, version or kernel source retunes."""
import importlib.util
import json
import os

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None
                                and os.environ.get("CONTRASTIVE_OPS_REQUIRE_TRITON") != "1",
                                reason="Triton is not installed")


@pytest.fixture
def cfg(monkeypatch, tmp_path):
    from contrastive_ops.kernels import config

    monkeypatch.setenv("CONTRASTIVE_OPS_TUNING_CACHE", str(tmp_path / "tuning.json"))
    monkeypatch.delenv("CONTRASTIVE_OPS_TRITON_CANDIDATES", raising=False)
    monkeypatch.setattr(config, "_tuned", {})
    return config


def test_a_tuned_choice_is_reused_from_disk(cfg, monkeypatch, tmp_path):
    timed = []
    slow_first = {cfg.GPU_CONFIGS[0]: 2.0, cfg.GPU_CONFIGS[1]: 1.0}

    def time_config(run, config):
        timed.append(config)
        return slow_first[config]

    monkeypatch.setattr(cfg, "_time_config_ms", time_config)
    key = ("disk-test", 4096)
    assert cfg.tuned_config(key, run=None) == cfg.GPU_CONFIGS[1]
    assert timed == list(cfg.GPU_CONFIGS[:cfg.DEFAULT_CANDIDATES])  # the default: the model's best two
    stored = json.loads((tmp_path / "tuning.json").read_text())
    assert list(stored.values()) == [cfg.GPU_CONFIGS[1].as_list()] and repr(key) in next(iter(stored))

    monkeypatch.setattr(cfg, "_tuned", {})  # a new process: nothing tuned in memory
    timed.clear()
    assert cfg.tuned_config(key, run=None) == cfg.GPU_CONFIGS[1] and timed == []
    # another problem, or other candidates, tune anew
    assert cfg.tuned_config(("disk-test", 8192), run=None) == cfg.GPU_CONFIGS[1] and len(timed) == 2
    monkeypatch.setenv("CONTRASTIVE_OPS_TRITON_CANDIDATES", "all")
    slow_first.update({c: 3.0 for c in cfg.GPU_CONFIGS[2:]})
    timed.clear()
    cfg.tuned_config(("disk-test", 16384), run=None)
    assert len(timed) == len(cfg.GPU_CONFIGS)


def test_the_disk_cache_can_be_turned_off_and_survives_a_bad_file(cfg, monkeypatch, tmp_path):
    monkeypatch.setattr(cfg, "_time_config_ms", lambda run, config: float(cfg.GPU_CONFIGS.index(config)))
    (tmp_path / "tuning.json").write_text("not json")
    assert cfg.tuned_config(("bad-file",), run=None) == cfg.GPU_CONFIGS[0]  # tuned again, file rewritten
    assert len(json.loads((tmp_path / "tuning.json").read_text())) == 1
    monkeypatch.setenv("CONTRASTIVE_OPS_TUNING_CACHE", "off")
    assert cfg.tuning_cache_path() is None
    monkeypatch.setattr(cfg, "_tuned", {})
    assert cfg.tuned_config(("bad-file",), run=None) == cfg.GPU_CONFIGS[0]
