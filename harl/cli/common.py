"""Shared CLI plumbing: :func:`run_cli` (how every ``harl-*`` command reports errors: one line, exit code 2
for configuration and input errors) and solo-learn-style ``--config-path/--config-name`` + Hydra overrides."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from omegaconf import DictConfig

from harl.config import load_yaml
from harl.errors import INPUT_ERRORS, CorruptImageError, DataFileError, data_error_message


def split_config_args(argv: Sequence[str], prog: str, description: str) -> Tuple[str, List[str]]:
    """Parse ``[--config-path DIR --config-name NAME | CONFIG.yaml] [key=value ...]``.

    Returns (absolute config file path, overrides).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description,
        epilog="Overrides use Hydra syntax: key=value, +new_key=value, ~key. Example: "
               f"{prog} --config-path scripts/pretrain/cifar --config-name byol.yaml max_epochs=10 "
               "data.train_path=./datasets",
    )
    parser.add_argument("config", nargs="?", help="a YAML config file (alternative to --config-path/--config-name)")
    parser.add_argument("--config-path", "-cp", dest="config_path", help="folder holding the config (Hydra style)")
    parser.add_argument("--config-name", "-cn", dest="config_name", help="config file name inside --config-path")
    args, rest = parser.parse_known_args(list(argv))
    overrides = [a for a in rest]
    if args.config and "=" in args.config:
        overrides.insert(0, args.config)
        args.config = None
    unknown_flags = [a for a in overrides if a.startswith("-")]
    if unknown_flags:
        parser.error(f"unrecognised option(s): {' '.join(unknown_flags)}")
    if args.config:
        path = args.config
    elif args.config_name:
        name = args.config_name if args.config_name.endswith((".yaml", ".yml")) else args.config_name + ".yaml"
        path = os.path.join(args.config_path or ".", name)
    else:
        parser.error("give a config: CONFIG.yaml, or --config-path DIR --config-name NAME")
    return os.path.abspath(path), overrides


def quote_override_values(overrides: Sequence[str]) -> List[str]:
    """Quote values that contain ``=`` (checkpoint names end in ``-ep=<e>.ckpt``), which Hydra's
    override grammar rejects: ``k=a-ep=9.ckpt`` → ``k='a-ep=9.ckpt'``. Quoted values, lists and
    mappings are left alone."""
    out = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if sep and "=" in value and value[:1] not in "'\"[{" and "'" not in value:
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def load_config(argv: Optional[Sequence[str]], prog: str, description: str) -> DictConfig:
    """The composed config of a CLI call (config file + quoted Hydra overrides)."""
    path, overrides = split_config_args(sys.argv[1:] if argv is None else argv, prog, description)
    return load_yaml(path, quote_override_values(overrides))


#: the default advice after a failed write (disk full, quota, file-size limit)
WRITE_HINT = ("files already written are kept (every file is written under a temporary name and renamed), free some "
              "space and rerun")


def error_line(err: BaseException) -> str:
    """The message of a configuration / input error: one line (a key mismatch lists the keys on the
    lines after it); a KeyError without its quotes; a data-file error without a worker's traceback."""
    if isinstance(err, (CorruptImageError, DataFileError)):
        return data_error_message(err) or type(err).__name__
    msg = err.args[0] if isinstance(err, KeyError) and err.args else err
    return str(msg) if str(msg).strip() else type(err).__name__


def run_cli(fn: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None, *,
            input_errors: Tuple[type, ...] = (), interrupted: str = "interrupted", write_hint: str = WRITE_HINT) -> int:
    """Run ``fn(argv)`` (which parses ``argv`` itself) the way every ``harl-*`` command runs.

    - returns ``fn``'s exit status (None: 0);
    - a configuration or input error (:data:`harl.errors.INPUT_ERRORS`, or one of the command's
      own ``input_errors``) prints one line ``error: <message>`` on stderr and returns 2;
    - argparse's usage errors keep argparse's own form (usage + ``prog: error: ...``) and exit 2;
    - a failed write (disk full, quota, file-size limit) prints one line and returns 1;
    - Ctrl-C prints ``interrupted`` and returns 130; a closed output pipe (``| head``) returns 0;
    - anything else is a bug and keeps its traceback.
    """
    try:
        return int(fn(argv) or 0)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` etc.: the work is done, stay quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except INPUT_ERRORS as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - narrowed below
        reason = write_failure(err)
        if reason is not None:
            print(f"error: could not write a file ({reason}); {write_hint}", file=sys.stderr)
            return 1
        if input_errors and isinstance(err, input_errors):
            print(f"error: {error_line(err)}", file=sys.stderr)
            return 2
        raise


def write_failure(err: BaseException) -> Optional[str]:
    """A one-line reason when ``err`` (or its cause) is a failed write: disk full, quota, file-size limit."""
    import errno

    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return f"{os.strerror(err.errno)}: {err.filename}" if err.filename else os.strerror(err.errno)
        text = str(err)
        if isinstance(err, RuntimeError) and ("file write failed" in text or "No space left" in text):
            return text.strip().splitlines()[0][:200]
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, table) -> None:
    """Check parsed options against a value table (``{dest: harl.config_values.Value}``) before any
    work starts; a bad value is a usage error naming the option, the value and what is expected
    (exit code 2)."""
    for dest, spec in table.items():
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        values = value if isinstance(value, list) and not hasattr(spec, "item") else [value]
        for v in values:
            if not spec.ok(v):
                flag = "--" + dest.replace("_", "-")
                for action in parser._actions:  # the option's own spelling (dest may differ from the flag)
                    if action.dest == dest and action.option_strings:
                        flag = action.option_strings[-1]
                parser.error(f"argument {flag}: {v!r}: expected {spec.expected()}")
