"""The model card's generated tables: the refresh script, and the card's commands name real files."""

from __future__ import annotations

import re

import pytest

from ..support import import_file
from .model_files import REPO

card_tool = import_file(REPO / "scripts" / "refresh_model_card.py")

CARD = """intro
<!-- generated: echo run >> {log} && printf '### Alpha\\n\\n| a |\\n### Beta\\n\\n| b |\\n' | sections: Beta; Alpha -->
old table
<!-- end generated -->
middle
<!-- generated: echo run >> {log} && printf '### Alpha\\n\\n| a |\\n### Beta\\n\\n| b |\\n' | sections: Beta -->
<!-- end generated -->
<!-- generated: printf 'plain output\\n' -->
stale
<!-- end generated -->
"""


def test_blocks_are_replaced_by_their_sections_and_each_command_runs_once(tmp_path):
    log = tmp_path / "runs.log"
    out = card_tool.refresh(CARD.format(log=log), only=[], skip=[])
    blocks = re.findall(r"-->\n(.*?)<!-- end generated -->", out, re.DOTALL)
    assert blocks == ["**Beta**\n\n| b |\n\n**Alpha**\n\n| a |\n\n", "**Beta**\n\n| b |\n\n", "plain output\n\n"]
    assert out.startswith("intro\n") and "\nmiddle\n" in out and "old table" not in out
    assert log.read_text().count("run") == 1  # two blocks, one command: one run


def test_skipped_blocks_stay_as_they_are(tmp_path):
    card = CARD.format(log=tmp_path / "runs.log")
    out = card_tool.refresh(card, only=[], skip=["runs.log"])
    assert "old table" in out and "stale" not in out and not (tmp_path / "runs.log").exists()


def test_a_missing_section_or_a_failing_command_stops_the_refresh(tmp_path):
    with pytest.raises(SystemExit, match="no section starting with 'Gamma'"):
        card_tool.refresh("<!-- generated: printf '### Alpha\\n' | sections: Gamma -->\n<!-- end generated -->",
                          [], [])
    with pytest.raises(SystemExit, match="exit code 3"):
        card_tool.refresh("<!-- generated: exit 3 -->\n<!-- end generated -->", [], [])


def test_the_model_card_commands_name_committed_files():
    card = (REPO / "model" / "README.md").read_text()
    commands = [card_tool.parse_marker(m["marker"])[0] for m in card_tool.BLOCK.finditer(card)]
    assert len(commands) >= 9
    named = {path for c in commands for path in re.findall(r"model/[\w.]+", c)}
    assert named and all((REPO / path).exists() for path in named), sorted(named)
