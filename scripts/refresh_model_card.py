"""Regenerate the measured tables of the model card (model/README.md) from the model files.

Every table the card shows between ``<!-- generated: COMMAND -->`` and ``<!-- end generated -->``
is output of COMMAND, run from the repository root with ``.venv/bin`` first on PATH. A marker
may end in ``| sections: A; B``: then only the output's ``### A...`` and ``### B...`` sections are
kept, in that order (the evaluation prints many tables, each block of the card shows some).
Headings become bold lines. Each distinct command runs once, so the card's blocks can share one
evaluation run.

    python scripts/refresh_model_card.py                      # every block (about 15 minutes)
    python scripts/refresh_model_card.py --only evaluate      # blocks whose command contains "evaluate"
    python scripts/refresh_model_card.py --skip model_speed   # all but the speed runs (busy machine)
    python scripts/refresh_model_card.py --list               # show the blocks and their commands

Speed blocks mean something only on an idle machine: skip them while a training run shares the CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- generated: (?P<marker>.*?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)


def parse_marker(marker: str) -> tuple[str, list[str]]:
    """``"cmd | sections: A; B"`` -> ``("cmd", ["A", "B"])``.

    >>> parse_marker("footfall-evaluate m.onnx --markdown | sections: Head metrics; Age MAE")
    ('footfall-evaluate m.onnx --markdown', ['Head metrics', 'Age MAE'])
    >>> parse_marker("footfall-rknn simulate m.onnx --markdown")
    ('footfall-rknn simulate m.onnx --markdown', [])
    """
    command, _, sections = marker.partition(" | sections: ")
    return command.strip(), [s.strip() for s in sections.split(";") if s.strip()]


def split_sections(output: str) -> list[tuple[str, str]]:
    """The ``### title`` sections of a command's output as (title, text with a bold title line).

    >>> split_sections("progress\\n### A table\\n\\n| a |\\n### B\\nb\\n")
    [('A table', '**A table**\\n\\n| a |'), ('B', '**B**\\nb')]
    """
    sections: list[tuple[str, list[str]]] = []
    for line in output.splitlines():
        if line.startswith("### "):
            title = line[4:].strip()
            sections.append((title, [f"**{title}**"]))
        elif sections:
            sections[-1][1].append(line)
    return [(title, "\n".join(lines).strip()) for title, lines in sections]


def select(output: str, wanted: list[str]) -> str:
    """The wanted sections (title prefixes, in this order), or the whole output when none are named."""
    if not wanted:
        return output.strip()
    sections = split_sections(output)
    picked = []
    for prefix in wanted:
        found = [text for title, text in sections if title.startswith(prefix)]
        if not found:
            raise SystemExit(f"no section starting with {prefix!r} in the output; it has: "
                             f"{', '.join(t for t, _ in sections)}")
        picked += found
    return "\n\n".join(picked)


def run(command: str) -> str:
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    print(f"$ {command}", file=sys.stderr, flush=True)
    done = subprocess.run(command, shell=True, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE)
    if done.returncode != 0:
        raise SystemExit(f"command failed with exit code {done.returncode}: {command}")
    return done.stdout


def refresh(card: str, only: list[str], skip: list[str]) -> str:
    def chosen(command: str) -> bool:
        return (not only or any(o in command for o in only)) and not any(s in command for s in skip)

    commands = list(dict.fromkeys(parse_marker(m["marker"])[0] for m in BLOCK.finditer(card)))
    # Commands that write a --json file run first: later blocks' commands read those files.
    commands.sort(key=lambda c: "--json" not in c)
    outputs = {c: run(c) for c in commands if chosen(c)}

    def replace(match: re.Match) -> str:
        command, wanted = parse_marker(match["marker"])
        if command not in outputs:
            return match.group(0)
        return f"{match.group(1)}{select(outputs[command], wanted)}\n\n{match.group(4)}"

    return BLOCK.sub(replace, card)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--card", type=Path, default=REPO / "model" / "README.md")
    parser.add_argument("--only", action="append", default=[], help="refresh blocks whose command contains this")
    parser.add_argument("--skip", action="append", default=[], help="keep blocks whose command contains this")
    parser.add_argument("--list", action="store_true", help="list the blocks and exit")
    args = parser.parse_args(argv)
    text = args.card.read_text()
    if args.list:
        for match in BLOCK.finditer(text):
            command, wanted = parse_marker(match["marker"])
            print(f"{command}\n    sections: {'; '.join(wanted) or '(whole output)'}")
        return
    args.card.write_text(refresh(text, args.only, args.skip))
    print(f"refreshed {args.card}", file=sys.stderr)


if __name__ == "__main__":
    main()
