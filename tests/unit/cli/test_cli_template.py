from pathlib import Path

from typer.testing import CliRunner

from atelier.cli.main import app


def test_template_commands_reach_the_images_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    ls = runner.invoke(app, ["template", "ls", "--data-dir", str(tmp_path)])
    assert ls.exit_code == 0, ls.output
    rm = runner.invoke(app, ["template", "rm", "nosuch", "--data-dir", str(tmp_path)])
    assert rm.exit_code != 0
    assert "template 'nosuch' not found" in rm.output
