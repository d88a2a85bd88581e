"""footfall-search: real (tiny) training trials, stored in SQLite, resumed, reported."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("optuna")

from footfall_training import search  # noqa: E402
from footfall_training import train as tr  # noqa: E402


def test_trials_train_with_their_parameters_and_the_study_resumes(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tr, "run_dir", lambda cfg: tmp_path / "runs" / cfg.run)
    monkeypatch.setattr(search, "storage_url", lambda study: f"sqlite:///{tmp_path / study}.db")
    recipe = ["--study", "s", "--width-choices", "0.25", "--limit", "64", "--epochs", "1", "--max-steps", "1",
              "--warmup-steps", "1", "--image-size", "48", "--startup", "1"]
    search.main(recipe + ["--trials", "2"])
    first = capsys.readouterr().out
    assert "2 finished trials" in first and "best: trial" in first
    # each trial is a training run with the sampled parameters
    ckpt = torch.load(tmp_path / "runs" / "s-t01" / "best.pt", weights_only=False)
    import optuna

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's'}.db")
    trial = study.trials[1]
    assert ckpt["config"]["lr"] == trial.params["lr"] and ckpt["config"]["dropout"] == trial.params["dropout"]
    assert ckpt["config"]["image_size"] == 48 and ckpt["config"]["width"] == 0.25
    assert trial.value == pytest.approx(search.trial_score(tmp_path / "runs" / "s-t01" / "best.pt",
                                                           tr.TrainConfig().head_names)[0])
    # the same command with more trials runs only the missing ones
    search.main(recipe + ["--trials", "3"])
    assert "3 finished trials" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["s-t00", "s-t01", "s-t02"]
    search.main(recipe + ["--trials", "3", "--report"])
    report = capsys.readouterr().out
    assert report.count("\n| ") == 4  # header + 3 trials
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's'}.db")
    best = max(study.trials, key=lambda t: t.value if t.value is not None else -1e9)
    assert f"best: trial {best.number} " in report
