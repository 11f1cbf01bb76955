"""The README documents every node the pack registers and keeps its two set-up commands."""

from pathlib import Path

from turbosample.nodes.registry import NODES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_node_id_is_in_the_readme_table():
    missing = [spec.node_id for spec in NODES if f"`{spec.node_id}`" not in README]
    assert not missing, f"README node table lacks {missing}"


def test_readme_keeps_the_two_fresh_machine_commands():
    assert "bash run.sh app" in README and "bash run.sh test" in README
