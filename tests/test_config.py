"""load_config: every --config of the CLI (``x.py[:arg]`` or ``x.json``) and its errors."""

import dataclasses
import json
from pathlib import Path

import pytest

from osteo_jax.cli import build_parser, main
from osteo_jax.config import (
    ExperimentConfig,
    ProtocolConfig,
    SegTrainConfig,
    load_config,
)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
DEMO = EXPERIMENTS / "demo.py"
TABLES = EXPERIMENTS / "tables.py"
ROW = f"{TABLES}:simclr_custom"  # one row of the table; ",SIZE" picks its size


@pytest.fixture(scope="module")
def demo():
    from osteo_jax.pipeline.experiment import demo_config

    return demo_config()


def test_python_file_with_and_without_argument():
    cpu = load_config(ROW, ProtocolConfig)
    demo = load_config(f"{ROW},demo", ProtocolConfig)
    paper = load_config(f"{ROW},paper", ProtocolConfig)
    assert load_config(f"{ROW},cpu", ProtocolConfig) == cpu  # the default size
    assert load_config(TABLES, ProtocolConfig) == cpu  # no argument: the paper's full pipeline
    widths = {c.backbone.width for c in (demo, cpu, paper)}
    assert widths == {4, 8, 64}  # three sizes, each reachable
    assert demo.ssl.backbone.depth == 18 and paper.ssl.backbone.depth == 50


def test_experiment_file_gives_its_parts(demo):
    assert load_config(DEMO, ExperimentConfig) == demo
    assert load_config(DEMO, SegTrainConfig) == demo.seg  # the train-seg bug: field is `seg`
    assert load_config(DEMO, ProtocolConfig) == demo.protocol
    wrapped = load_config(f"{ROW},demo", ExperimentConfig)  # a protocol row runs as is
    assert wrapped.protocol == load_config(f"{ROW},demo", ProtocolConfig)
    assert wrapped.name == wrapped.protocol.name and wrapped.seg == ExperimentConfig().seg


def test_json_bare_under_config_and_from_an_experiment(tmp_path, demo):
    bare, run = tmp_path / "seg.json", tmp_path / "config.json"
    bare.write_text(json.dumps(dataclasses.asdict(demo.seg)))
    run.write_text(json.dumps({"data": "x", "config": dataclasses.asdict(demo)}))
    assert load_config(bare, SegTrainConfig) == demo.seg
    assert load_config(str(run), ExperimentConfig) == demo
    assert load_config(run, SegTrainConfig) == demo.seg
    assert load_config(run, ProtocolConfig) == demo.protocol


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.py: config file not found"):
        load_config(tmp_path / "missing.py", ProtocolConfig)
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ValueError, match=r"empty\.py: no get_config\(\)"):
        load_config(empty, ProtocolConfig)
    with pytest.raises(ValueError, match=r"demo\.py: get_config\(\) takes no argument 'cpu'"):
        load_config(f"{DEMO}:cpu", ExperimentConfig)
    with pytest.raises(ValueError, match=r"cls_quality\.py: get_config\(\) returned dict"):
        load_config(EXPERIMENTS / "cls_quality.py", ProtocolConfig)
    with pytest.raises(
        ValueError, match=r"tables\.py: .*ProtocolConfig, expected SegTrainConfig or Exp"
    ):
        load_config(ROW, SegTrainConfig)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochs": 3, "no_such_field": 1}))
    with pytest.raises(ValueError, match=r"bad\.json: unknown SegTrainConfig fields"):
        load_config(bad, SegTrainConfig)
    yaml = tmp_path / "cfg.yaml"
    yaml.write_text("a: 1\n")
    with pytest.raises(ValueError, match=r"cfg\.yaml: a config is a \.py file"):
        load_config(yaml, SegTrainConfig)


def _args(*argv):
    return build_parser().parse_args(list(argv))


def test_cli_train_seg_reads_the_seg_part_of_an_experiment(demo):
    from osteo_jax.cli.train import _seg_train_config

    args = _args("train-seg", "--data", "d", "--out", "o", "--config", str(DEMO), "--epochs", "3")
    assert _seg_train_config(args) == dataclasses.replace(demo.seg, epochs=3)


def test_cli_protocol_commands_reach_every_size():
    from osteo_jax.cli.train import _protocol_config

    for cmd in ("evaluate", "pretrain", "train-cls"):
        args = _args(cmd, "--segments", "s", "--out", "o", "--config", f"{ROW},demo")
        assert _protocol_config(args) == load_config(f"{ROW},demo", ProtocolConfig), cmd


def test_cli_run_reads_a_table_row(monkeypatch, tmp_path):
    import osteo_jax.cli.run as cli_run
    import osteo_jax.pipeline.experiment as experiment

    seen = []
    monkeypatch.setattr(experiment, "run_experiment", lambda cfg, out, **kw: seen.append(cfg))
    monkeypatch.setattr(cli_run, "_print_run", lambda result: None)
    assert main(["run", "--config", f"{ROW},demo", "--out", str(tmp_path)]) == 0
    assert seen == [load_config(f"{ROW},demo", ExperimentConfig)]
    assert seen[0].protocol.ssl.backbone.width == 4  # the demo size, not the default


def test_cli_config_errors_exit_2_naming_the_file(tmp_path, capsys):
    argv = ["train-seg", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*argv, "--config", str(ROW)]) == 2
    assert "tables.py: get_config() returned ProtocolConfig" in capsys.readouterr().err
    argv = ["evaluate", "--segments", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*argv, "--config", f"{DEMO}:cpu"]) == 2
    assert "demo.py: get_config() takes no argument 'cpu'" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "nope.py"), "--out", str(tmp_path)]) == 2
    assert "nope.py: config file not found" in capsys.readouterr().err
