"""``python -m backend --host 127.0.0.1 --port 9090``: load the engine, then serve (threaded)."""
from __future__ import annotations

import argparse
import logging
import sys

from backend.config import ConfigError, Settings
from backend.ops.logs import setup_logging

log = logging.getLogger("backend")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("preannotate", "jobs", "worker"):  # docs/jobs.md
        from backend.jobs.cli import main as jobs_main

        return jobs_main(argv)
    if argv and argv[0] == "report":  # agreement per label (docs/corrections.md)
        from backend.corrections.report import main as report_main

        return report_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=9090, help="port (default 9090)")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default: $LOG_LEVEL or INFO")
    parser.add_argument("--check", action="store_true",
                        help="check the settings and every weight file, load the engine, print its version, "
                             "exit (nothing is served)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        settings = Settings.from_env()
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
        from label_studio_ml import api

        print(api._manager.init_kwargs["pipeline"].predictor.model_version)
        return 0
    log.info("serving on http://%s:%d", args.host, args.port)
    from werkzeug.serving import run_simple

    run_simple(args.host, args.port, app, threaded=True, use_reloader=False, use_debugger=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
