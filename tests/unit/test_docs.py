"""The README stays true: every setting is documented, the two commands exist."""

from pathlib import Path

from cluster.settings import FLAT_NAMES

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in FLAT_NAMES if f"`HERALD_{n.upper()}`" not in readme]
    assert missing == []


def test_readme_commands_exist_in_makefile():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test", "demo"):
        assert f"\n{target}:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
