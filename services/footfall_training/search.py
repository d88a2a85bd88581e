"""A small hyperparameter search (Optuna) on the proxy recipe: learning rate, loss weights, dropout, width.

Every trial is an ordinary ``footfall_training.train`` run (run ``<study>-tNN``) at the proxy recipe
given on the command line (by default 64 px faces, a few short epochs on a fixed subset, 1 thread),
scored by the selection score of its best validation epoch (``footfall_training.metrics``). The
study lives in an SQLite file under ``<cache_dir>/search/``, so the same command resumes it: trials
already finished count towards ``--trials``, and an interrupted trial's run resumes from its
checkpoint when its parameters are asked again (a new trial number otherwise).

    footfall-search --study p64-mnv3 --arch mnv3 --width-choices 0.5,0.6,0.75 --trials 6
    footfall-search --study p64-mnv3 --report      # the table and the best configuration only

It prints the trials table and the best configuration as a ``footfall-train`` command. With few
trials the sampler's first ``--startup`` trials are random; TPE picks the later ones.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, fields
from pathlib import Path

import torch

from footfall_training.metrics import selection_score
from footfall_training.train import TrainConfig, train

#: What the search varies, and the range of each (loss weights are relative, around the paper's).
SEARCHED = ("lr", "w_age", "w_gender", "w_race", "w_emotion", "dropout", "width")


def storage_url(study: str) -> str:
    from footfall.config import ModelSettings

    folder = Path(ModelSettings().cache_dir) / "search"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / study}.db"


def suggest(trial, widths: list[float]) -> dict:
    """One point of the search space."""
    return {
        "lr": trial.suggest_float("lr", 5e-4, 6e-3, log=True),
        "w_age": trial.suggest_float("w_age", 0.3, 2.0, log=True),
        "w_gender": trial.suggest_float("w_gender", 0.3, 2.0, log=True),
        "w_race": trial.suggest_float("w_race", 0.3, 2.0, log=True),
        "w_emotion": trial.suggest_float("w_emotion", 0.3, 2.0, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.4),
        "width": trial.suggest_categorical("width", widths),
    }


def trial_score(best_checkpoint: Path, heads: tuple[str, ...]) -> tuple[float, dict]:
    """Selection score and validation metrics of a run's best epoch."""
    metrics = torch.load(best_checkpoint, map_location="cpu", weights_only=False)["metrics"]
    return selection_score(metrics, heads), metrics


def objective(base: TrainConfig, study: str, widths: list[float]):
    def run(trial) -> float:
        params = suggest(trial, widths)
        cfg = TrainConfig(**{**asdict(base), **params, "run": f"{study}-t{trial.number:02d}"})
        score, metrics = trial_score(train(cfg), cfg.head_names)
        for key in ("age_mae", "gender_acc", "race_acc", "emotion_acc"):
            trial.set_user_attr(key, float(metrics[key]))
        return score

    return run


def report(study) -> str:
    """The trials table (best first) and the best configuration as a footfall-train command."""
    import optuna

    done = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                  key=lambda t: -t.value)
    header = ["trial", "score", "age MAE", "gender %", "race %", "emotion %", *SEARCHED]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for t in done:
        a = t.user_attrs
        lines.append("| " + " | ".join([
            str(t.number), f"{t.value:.4f}", f"{a.get('age_mae', float('nan')):.2f}",
            *(f"{100 * a.get(k, float('nan')):.1f}" for k in ("gender_acc", "race_acc", "emotion_acc")),
            *(f"{t.params[k]:.2g}" if k != "width" else f"{t.params[k]:.2f}" for k in SEARCHED)]) + " |")
    out = [f"### Search {study.study_name}: {len(done)} finished trials (validation, best first)", "", *lines]
    if done:
        best = done[0]
        flags = " ".join(f"--{k.replace('_', '-')} {best.params[k]:.3g}" for k in SEARCHED)
        out += ["", f"best: trial {best.number} (score {best.value:.4f}): footfall-train {flags}"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    import optuna

    parser = argparse.ArgumentParser(prog="footfall-search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="p64", help="study name (SQLite file and run-name prefix)")
    parser.add_argument("--trials", type=int, default=5, help="finished trials wanted in all (resumes count)")
    parser.add_argument("--startup", type=int, default=3, help="random trials before TPE")
    parser.add_argument("--width-choices", default="0.35,0.5,0.75", help="widths to choose from")
    parser.add_argument("--report", action="store_true", help="print the table of the study so far, train nothing")
    # The proxy recipe (any other TrainConfig field keeps its default).
    parser.add_argument("--arch", default="mnv2")
    parser.add_argument("--attention", default="none")
    parser.add_argument("--shared-depth", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--limit", type=int, default=9600)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=args.study, storage=storage_url(args.study), direction="maximize",
                                load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=args.startup))
    if not args.report:
        recipe = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
        base = TrainConfig(**recipe)
        finished = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        remaining = max(0, args.trials - finished)
        widths = [float(w) for w in args.width_choices.split(",")]
        study.optimize(objective(base, args.study, widths), n_trials=remaining)
    print(report(study))


if __name__ == "__main__":
    main()
