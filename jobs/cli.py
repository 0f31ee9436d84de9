"""The ``callic`` command line.

Start-up is kept short: this module imports nothing heavy, ``callic --help`` lists the commands
from ``COMMANDS`` (name -> module and one-line help) without importing any of them, and a command
line imports and builds only the parser of the command it names (torch and Ray load only for the
commands that use them; ``info`` never does). ``build_parser()`` with no argument builds every
command's parser, for code that parses whole command lines (the demo, the infra tests).

Exit codes: 0 success, 1 other error (missing input file, disk full...), 2 unreadable input image,
3 corrupt or truncated file, 4 unsupported (format version, mode, output format), 5 model not
installed, 6 pixel hash mismatch, 64 bad usage; archive jobs add 7..11 (``jobs.archive``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from importlib import import_module, metadata
from typing import NamedTuple

from codec.defaults import DEFAULT_STEPS
from codec.errors import CallicError

EXIT_USAGE = 64
EXIT_OTHER = 1
THREADS_HELP = "torch CPU threads (default: $OMP_NUM_THREADS, else the cores this process may use; see README)"


class Command(NamedTuple):
    """Where a command's parser is built (``module:function``) and its line in ``callic --help``."""

    builder: str
    help: str


COMMANDS: dict[str, Command] = {
    "encode": Command("jobs.codeccli:add_encode_parser", "compress images to .cllc (lossless; --codec cca: lossy)"),
    "decode": Command("jobs.codeccli:add_decode_parser", "decompress .cllc files to PNG, TIFF, PPM or BMP"),
    "info": Command("jobs.codeccli:add_info_parser", "print what a .cllc file holds, as JSON"),
    "demo": Command("jobs.cli:add_demo_parser", "archive and restore the bundled sample images through the pipeline"),
    "train": Command(
        "jobs.train:add_parser", "train a codec model (MGCF, or the lossy CCA model) on images (resumable)"
    ),
    "data": Command("jobs.datasets:add_parser", "download and prepare the training and evaluation image sets"),
    "bench": Command(
        "jobs.bench.command:add_parser", "lossless benchmark: callic vs JPEG XL, WebP, JPEG 2000, JPEG-LS, PNG"
    ),
    "archive": Command(
        "jobs.archive:add_parsers",
        "compress every image under SRC into a job folder under DST, with a manifest",
    ),
    "resume": Command("jobs.archive:add_parsers", "continue an archive job from its manifest"),
    "status": Command("jobs.archive:add_parsers", "progress, bytes saved and failures of an archive job"),
    "restore": Command("jobs.archive:add_parsers", "decode archived images back to their files, hashes verified"),
    "verify": Command("jobs.verifyjob:add_parser", "check every stored object of a job against its manifest (fixity)"),
}


class UsageError(CallicError):
    """A command line that cannot mean anything (exit 64), found after argparse's own checks."""

    exit_code = EXIT_USAGE


STORAGE_OPTIONS_HELP = "fsspec storage options: JSON, or @file.json (credentials, endpoint)"


def storage_options(text: str | None) -> dict:
    """``--storage-options`` of every command that takes a URL: a JSON object, or
    ``@file.json`` (keeps secrets out of shell history)."""
    import json
    from pathlib import Path

    if not text:
        return {}
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        value = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--storage-options: not a JSON object or @file: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise UsageError("--storage-options must be a JSON object")
    return value


def version() -> str:
    try:
        return metadata.version("callic")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=COMMANDS["demo"].help)
    p.add_argument("--out", default="callic-demo", help="folder for the archive and the restored images")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"adaptation steps (default {DEFAULT_STEPS})")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the final table")
    p.set_defaults(func=lambda a: import_module("jobs.demo").main(a))


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the real sub-parsers of ``commands`` (default: all; their modules are
    imported) and a stub with its help line for every other command."""
    parser = argparse.ArgumentParser(prog="callic", description="Learned lossless image compression (CALLIC).")
    parser.add_argument("--version", action="version", version=f"callic {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = list(COMMANDS) if commands is None else list(commands)
    for builder in dict.fromkeys(COMMANDS[name].builder for name in wanted):  # archive.py builds four
        module, function = builder.split(":")
        getattr(import_module(module), function)(sub)
    for name, command in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=command.help, add_help=False)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The command a command line names: its first word that is not an option."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def error_report(exc: BaseException, name: str | None = None) -> tuple[int, str]:
    """The exit code and the message for a failure, naming the user's file (``name``) and never a
    temporary one; credentials in URLs are masked."""
    from pipeline.storage import redact

    if isinstance(exc, CallicError):
        code, message = exc.exit_code, str(exc)
    elif isinstance(exc, OSError):
        code = EXIT_OTHER
        if exc.strerror and exc.filename is not None:
            message = f"{exc.filename}: {exc.strerror}"
        else:
            message = exc.strerror or str(exc)
    else:
        raise exc
    if name is not None and name not in message:
        message = f"{name}: {message}"
    return code, redact(message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    parser = build_parser([command] if command else [])
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    try:
        from jobs.runtime import allow_large_images

        allow_large_images()
        return args.func(args)
    except BrokenPipeError:  # `callic info f | head`: the reader left; nothing to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OTHER
    except (CallicError, OSError) as exc:
        code, message = error_report(exc)
        if getattr(args, "log_json", False):  # stderr stays pure JSON lines (pipeline.events)
            import json

            print(
                json.dumps({"level": "error", "event": "error", "message": message, "exit_code": code}), file=sys.stderr
            )
        else:
            print(f"callic: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
