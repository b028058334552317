"""``python -m backend [serve] --host 127.0.0.1 --port 9090``: load the engine, then serve (threaded, with
connection deadlines: :func:`backend.http.deadlines.serve_werkzeug`).

The other sub-commands (``worker``, ``preannotate``, ``jobs``, ``report``) live in their own
modules, imported only when chosen: ``python -m backend jobs`` or ``--help`` never load the model.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable

log = logging.getLogger("backend")

# sub-command -> (module, help); each module's ``main(argv)`` parses the rest of the command line
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("backend.jobs.cli", "work on the pre-annotation queue, engine loaded (docs/jobs.md)"),
    "preannotate": ("backend.jobs.cli", "start a job that pre-annotates a project's tasks (docs/jobs.md)"),
    "jobs": ("backend.jobs.cli", "list jobs, show one, cancel one: jobs [JOB_ID] | jobs cancel JOB_ID"),
    "report": ("backend.corrections.report", "agreement of corrected annotations per label (docs/corrections.md)"),
}
SERVE_HELP = "load the engine, then serve Label Studio's ML API (the default command)"


def _serve_options(parser: argparse.ArgumentParser, default: object = None) -> None:
    """The serving flags; ``default=argparse.SUPPRESS`` on ``serve`` keeps values given before it."""
    pick = (lambda value: value) if default is None else (lambda value: default)
    parser.add_argument("--host", default=pick("0.0.0.0"), help="address to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=pick(9090), help="port (default 9090)")
    parser.add_argument("--log-level", default=pick(None), choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default: $LOG_LEVEL or INFO")
    parser.add_argument("--check", action="store_true", default=pick(False),
                        help="check the settings and every weight file, load the engine, print its version, "
                             "exit (nothing is served)")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: serving flags plus one sub-parser per sub-command.

    A delegated sub-command's parser takes no arguments of its own (``add_help=False``): what follows
    its name goes, untouched, to its module's ``main`` (which prints its own ``--help``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m backend", description=__doc__.split("\n\n")[0],
        usage="%(prog)s [--host HOST] [--port PORT] [--log-level LEVEL] [--check]\n"
              "       %(prog)s COMMAND [options]   (COMMAND: serve, " + ", ".join(COMMANDS) + ")",
        epilog="python -m backend COMMAND --help: that command's options")
    _serve_options(parser)
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND", prog=parser.prog)
    serve = commands.add_parser("serve", help=SERVE_HELP, description=SERVE_HELP)
    _serve_options(serve, default=argparse.SUPPRESS)
    for name, (_, text) in COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def _delegate(command: str, rest: list[str]) -> int:
    """Run a sub-command's module (imported now, not before)."""
    module = importlib.import_module(COMMANDS[command][0])
    run: Callable[[list[str]], int] = module.main
    if module.__name__ == "backend.jobs.cli":  # one main for its three commands, named first
        return run([command, *rest])
    return run(rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in COMMANDS:
        return _delegate(args.command, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return serve(args)


def serve(args: argparse.Namespace) -> int:
    """Check the settings and the weight files, build the app, then serve it (or ``--check``: stop)."""
    from backend.config import ConfigError, Settings
    from backend.ops.logs import setup_logging
    from backend.startup import server_checks

    setup_logging(args.log_level)
    try:
        settings = Settings.from_env()
        server_checks(settings, host=args.host)  # basic auth, a loopback bind or CASS_ALLOW_UNAUTHENTICATED;
                                                  # the state Redis's policy
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2

    from cass import PresetError, WeightsError

    from backend.http.app import create_app
    from backend.predict.weights_check import weights_error

    problem = weights_error(settings)  # every missing file at once, before loading anything
    if problem is not None:
        print(f"could not load the model: {problem}", file=sys.stderr)
        return 1

    try:
        app = create_app(settings)
    except (WeightsError, PresetError) as exc:
        print(f"could not load the model: {exc}", file=sys.stderr)
        return 1
    if args.check:
        from backend.http.mlbackend import CASSManager

        print(CASSManager.pipeline().predictor.model_version)
        return 0
    from backend.http.deadlines import serve_werkzeug

    # werkzeug, threaded, with the header deadline, body idle timeout and connection bound of
    # backend.http.deadlines (Settings.connections: CASS_HEADER_TIMEOUT_S, CASS_BODY_IDLE_S, CASS_MAX_CONNECTIONS)
    serve_werkzeug(app, args.host, args.port, connections=settings.connections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
