"""The README's examples run: its Python blocks execute and its commands exist."""

import re
import shlex
from pathlib import Path

from convnext.cli import COMMANDS, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = "\n".join(blocks("python")).replace("/tmp/atto", str(tmp_path / "atto"))
    assert code.strip()
    exec(compile(code, "README.md", "exec"), {})


def test_every_cli_example_parses():
    lines = [line.split("#")[0].strip() for block in blocks("bash") for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith(("convnext ", "torchrun "))]
    assert len(commands) > 10
    for argv in commands:
        argv = argv[argv.index("convnext") + 1:] if "convnext" in argv else argv[argv.index("-m") + 2:]
        assert argv[0] in COMMANDS, argv
        build_parser(argv).parse_args(argv)  # raises SystemExit on an unknown option
