"""`alignkd demo --quick`: the embedded default end to end, on a reduced task."""

from __future__ import annotations

import json

import pytest

from alignkd.cli import main
from alignkd.demo.models import has_shipped_teacher

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not has_shipped_teacher(), reason="the demo teacher is not shipped in this checkout")
def test_quick_demo_writes_report(tmp_path, capsys):
    output = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(output)]) == 0

    printed = capsys.readouterr().out
    for run in ("teacher", "sft", "vanilla-kd", "paper"):
        assert f"| {run} |" in printed

    report = output / "report"
    for name in ("results.md", "results.json", "accuracy.png", "loss_curves.png", "attention.png"):
        assert (report / name).stat().st_size > 0, name

    results = json.loads((report / "results.json").read_text())
    assert set(results["runs"]) == {"teacher", "sft", "vanilla-kd", "paper"}
    kinds = {"read", "count", "exists", "where", "sum"}
    for run, values in results["runs"].items():
        assert set(values["per_seed"][0]["per_kind"]) == kinds, run
        assert 0.0 <= values["mean"]["overall"] <= 100.0, run
    # Students share the teacher's vision tower and the same initialisation per seed.
    assert results["parameters"]["student"]["total"] < results["parameters"]["teacher"]["total"]
    assert results["parameters"]["student"]["vision_tower"] == results["parameters"]["teacher"]["vision_tower"]

    # The teacher copy and the student initialisation are there for examples/configs.
    assert (output / "teacher" / "config.json").is_file()
    assert (output / "students" / "init-seed0" / "config.json").is_file()


def test_unknown_preset_is_rejected():
    from alignkd.demo.run import DemoConfig, run_demo
    from alignkd.errors import AlignKDError

    with pytest.raises(AlignKDError, match="unknown presets"):
        run_demo(DemoConfig(presets=["align-kd"]))


def test_changed_settings_rejected_untouched(tmp_path):
    from alignkd.demo.run import SETTINGS_FILE, DemoConfig, run_demo
    from alignkd.errors import AlignKDError

    output = tmp_path / "demo"
    output.mkdir()
    earlier = {"num_train": 1000, "student_steps": 20}
    (output / SETTINGS_FILE).write_text(json.dumps(earlier))

    with pytest.raises(AlignKDError) as raised:
        run_demo(DemoConfig(output_dir=str(output)))

    message = str(raised.value)
    assert "num_train 1000 -> 20000" in message
    assert "student_steps 20 -> 1500" in message
    assert "--output" in message
    # Nothing was built or overwritten before the check.
    assert sorted(path.name for path in output.iterdir()) == [SETTINGS_FILE]
    assert json.loads((output / SETTINGS_FILE).read_text()) == earlier


def test_quick_default_folder_is_separate(monkeypatch, tmp_path):
    import alignkd.demo.run as demo_run

    used = []
    monkeypatch.setattr(demo_run, "run_demo", lambda config: used.append(config.output_dir))
    monkeypatch.setattr(demo_run, "summarize", lambda results: "")
    monkeypatch.chdir(tmp_path)

    main(["demo", "--quick"])
    main(["demo"])

    assert used == ["alignkd-demo-quick", "alignkd-demo"]
