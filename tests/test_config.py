import dataclasses

import pytest

from unsolo.config import parse_overrides, resolve, save_config
from unsolo.errors import UnsoloError


@dataclasses.dataclass
class Solver:
    lr: float = 0.001  # base learning rate
    steps: tuple[int, ...] = ()


@dataclasses.dataclass
class Cfg:
    name: str = "x"
    solver: Solver = dataclasses.field(default_factory=Solver)
    level: str = "res5"
    size: int | None = None


def test_overrides_and_types(tmp_path):
    cfg = resolve(Cfg, "nostage", overrides=["solver.lr=1e-3", "solver.steps=[3, 4]", "size=5"])
    assert cfg.solver.lr == 0.001 and cfg.solver.steps == (3, 4) and cfg.size == 5
    preset = tmp_path / "p.yaml"
    preset.write_text("solver:\n  lr: 0.5\nlevel: res4\n")
    cfg = resolve(Cfg, "nostage", preset=str(preset), overrides=["solver.lr=0.25"])
    assert cfg.solver.lr == 0.25 and cfg.level == "res4"
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert "lr: 0.25" in (tmp_path / "out" / "config.yaml").read_text()
    assert parse_overrides(["a.b=true"]) == {"a": {"b": True}}


def test_bad_config_errors(tmp_path):
    with pytest.raises(UnsoloError, match="unknown config key"):
        resolve(Cfg, "nostage", overrides=["solvr.lr=1"])
    with pytest.raises(UnsoloError, match="must be int"):
        resolve(Cfg, "nostage", overrides=["size=abc"])
    with pytest.raises(UnsoloError, match="key=value"):
        parse_overrides(["nonsense"])
    with pytest.raises(UnsoloError, match="unknown nostage preset"):
        resolve(Cfg, "nostage", preset="nope")
