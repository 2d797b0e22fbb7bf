"""Every console command reports a bad input the same way: one line ``error: ...`` on stderr, exit 2
(:func:`harl.cli.common.run_cli`); argparse's usage errors exit 2 too."""

from __future__ import annotations

import importlib
import os
import re

import pytest

SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def entry_points():
    """``{command: "module:function"}`` of setup.py's console scripts."""
    with open(SETUP, encoding="utf-8") as f:
        text = f.read()
    return dict(re.findall(r'"(harl-[a-z]+)=([a-z_.]+:[a-z_]+)"', text))


def _main(command: str):
    module, func = entry_points()[command].split(":")
    return getattr(importlib.import_module(module), func)


#: one bad input per command, found before any work starts
BAD_INPUTS = {
    "harl-pretrain": lambda t: [str(t / "missing.yaml")],
    "harl-linear": lambda t: [str(t / "missing.yaml")],
    "harl-finetune": lambda t: [str(t / "missing.yaml")],
    "harl-transfer": lambda t: ["--pretrained", str(t / "missing.ckpt"), "--train", str(t), "--test", str(t)],
    "harl-masks": lambda t: ["eval", "--pred", str(t / "no-pred"), "--gt", str(t / "no-gt")],
    "harl-scenes": lambda t: ["--out", str(t / "out"), "--fmnist-root", str(t / "no-fmnist"), "--train", "2",
                              "--test", "1", "--no-progress"],
    "harl-report": lambda t: [str(t / "no-runs")],
    "harl-zoo": lambda t: ["list", "--manifest", str(t / "missing.yaml")],
}


def test_every_entry_point_has_a_bad_input_case():
    assert set(entry_points()) == set(BAD_INPUTS), "add the new command to BAD_INPUTS"


@pytest.mark.parametrize("command", sorted(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_exit_2(command, tmp_path, capsys):
    rc = _main(command)(BAD_INPUTS[command](tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, (command, rc, err)
    assert len(err) == 1 and err[0].startswith("error: "), (command, err)


@pytest.mark.parametrize("command", sorted(BAD_INPUTS))
def test_usage_error_exits_2(command, capsys):
    with pytest.raises(SystemExit) as ex:
        _main(command)(["--no-such-option"])
    assert ex.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_run_cli_paths(capsys):
    """The same function decides every command's exit status."""
    from harl.cli.common import run_cli
    from harl.errors import ConfigError

    def raise_(err):
        def fn(argv):
            raise err
        return fn

    assert run_cli(lambda argv: None) == 0
    assert run_cli(lambda argv: 1) == 1
    assert run_cli(raise_(ConfigError("config key 'x' is bad"))) == 2
    assert capsys.readouterr().err == "error: config key 'x' is bad\n"
    assert run_cli(raise_(KeyError("unknown name 'y'")), input_errors=(KeyError,)) == 2
    assert capsys.readouterr().err == "error: unknown name 'y'\n"
    with pytest.raises(KeyError):  # not an input error of this command: a bug, traceback kept
        run_cli(raise_(KeyError("z")))
    assert run_cli(raise_(OSError(28, "No space left on device"))) == 1
    assert capsys.readouterr().err.startswith("error: could not write a file (No space left on device)")
    assert run_cli(raise_(KeyboardInterrupt())) == 130
