"""``python -m backend preannotate|jobs|worker``: start, watch and cancel jobs from a shell.

    python -m backend preannotate --project 3 [--tasks 1,2,7-9] [--only-outdated | --all] [--view 5] [--wait]
    python -m backend preannotate --retry-failed JOB_ID [--wait]
    python -m backend jobs [JOB_ID] [--json]
    python -m backend jobs cancel JOB_ID
    python -m backend worker [--burst]

They read ``REDIS_URL``, ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` like the backend.
Exit status: 0 done, 1 the job failed or was cancelled, 2 bad input / configuration, 3 conflict (a
job for the same project and filter is running; its id is printed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from backend.jobs.spec import JobSpec, JobSpecError, parse_task_ids

COMMANDS = ("preannotate", "jobs", "worker")


def _jobs():
    from backend.config import Settings
    from backend.labelstudio.client import Projects
    from backend.jobs.queue import Jobs, connect

    settings = Settings.from_env()
    return Jobs(connect(settings.redis_url),
                Projects(settings.label_studio_url or "", settings.label_studio_api_key or ""), settings)


def progress_line(rec: dict, elapsed_s: float) -> str:
    """``[#####.....] 20/40 done, 2 failed, 3 skipped | 1.8 images/s | ETA 11s | running``."""
    total, processed = rec["total"], rec["done"] + rec["skipped"] + rec["failed"]
    width = 30
    filled = int(width * processed / total) if total else width
    rate = rec["done"] / elapsed_s if elapsed_s > 0 else 0.0
    left = total - processed
    eta = f"{left / rate:.0f}s" if rate > 0 and left else ("0s" if not left else "?")
    return (f"[{'#' * filled}{'.' * (width - filled)}] {processed}/{total} "
            f"({rec['done']} done, {rec['failed']} failed, {rec['skipped']} skipped) | {rate:.2f} images/s | "
            f"ETA {eta} | {rec['status']}")


def wait(jobs, job_id: str, out=sys.stdout, poll_s: float = 1.0) -> dict:
    t0 = time.monotonic()
    tty = out.isatty()
    last = ""
    while True:
        rec = jobs.get(job_id)
        line = progress_line(rec, time.monotonic() - t0)
        if line != last:
            out.write(("\r" + line) if tty else line + "\n")
            out.flush()
            last = line
        if rec["status"] in ("finished", "cancelled", "failed"):
            if tty:
                out.write("\n")
            return rec
        time.sleep(poll_s)


def show(rec: dict, out=sys.stdout) -> None:
    spec = rec["spec"]
    out.write(f"job {rec['id']}: {rec['status']}, project {spec['project']}"
              f"{', tasks ' + str(len(spec['task_ids'])) if spec.get('task_ids') else ''}"
              f"{', all tasks' if not spec.get('only_outdated', True) else ''}"
              f"{', retry of ' + spec['retry_of'] if spec.get('retry_of') else ''}: "
              f"{rec['done']} done, {rec['skipped']} skipped, {rec['failed']} failed of {rec['total']}"
              f"{', ' + rec['error'] if rec.get('error') else ''}\n")
    for task_id, reason in rec["failed_tasks"].items():
        out.write(f"  failed task {task_id}: {reason}\n")


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "worker":
        from backend.jobs.worker import main as worker_main

        return worker_main(rest)
    from backend.config import ConfigError
    from backend.ops.logs import setup_logging
    from backend.labelstudio.client import LabelStudioError
    from backend.jobs.queue import JobConflict, JobNotFound

    setup_logging("WARNING")
    try:
        if command == "preannotate":
            return preannotate(rest)
        return jobs_command(rest)
    except JobConflict as exc:
        print(f"refused: {exc}", file=sys.stderr)
        print(exc.job_id)
        return 3
    except (JobSpecError, ConfigError, LabelStudioError, JobNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def preannotate_parser() -> argparse.ArgumentParser:
    """The arguments of ``python -m backend preannotate``."""
    p = argparse.ArgumentParser(prog="python -m backend preannotate",
                                description="pre-annotate a project's tasks on the workers (docs/jobs.md)")
    p.add_argument("--project", type=int, help="Label Studio project id")
    p.add_argument("--tasks", type=parse_task_ids, help="only these task ids: 1,2,7-9")
    p.add_argument("--view", type=int, help="only the tasks of this data-manager view (tab) id")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--only-outdated", dest="all", action="store_false",
                       help="(the default) only tasks without a prediction of the version the workers post "
                            "(engine + label set)")
    which.add_argument("--all", dest="all", action="store_true",
                       help="queue every task (those already current are still skipped, and counted, by the "
                            "workers)")
    p.set_defaults(all=False)
    p.add_argument("--chunk-size", type=int, default=8, help="tasks per RQ job (default 8)")
    p.add_argument("--retry-failed", metavar="JOB_ID", help="a new job for the failed tasks of JOB_ID")
    p.add_argument("--wait", action="store_true", help="show progress until the job is over")
    return p


def preannotate(argv: list[str]) -> int:
    p = preannotate_parser()
    args = p.parse_args(argv)
    jobs = _jobs()
    if args.retry_failed:
        rec = jobs.retry_failed(args.retry_failed, args.chunk_size)
    else:
        if args.project is None:
            p.error("--project is required (or --retry-failed JOB_ID)")
        rec = jobs.start(JobSpec(project=args.project, task_ids=args.tasks, only_outdated=not args.all,
                                 view=args.view, chunk_size=args.chunk_size))
    print(rec["id"], flush=True)
    if not args.wait:
        return 0
    rec = wait(jobs, rec["id"])
    show(rec)
    return 0 if rec["status"] == "finished" else 1


def jobs_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m backend jobs", description="list jobs, show one, cancel one")
    p.add_argument("args", nargs="*", help="[JOB_ID] | cancel JOB_ID")
    p.add_argument("--json", action="store_true", help="JSON output")
    args = p.parse_args(argv)
    jobs = _jobs()
    if args.args and args.args[0] == "cancel":
        if len(args.args) != 2:
            p.error("usage: jobs cancel JOB_ID")
        recs = [jobs.cancel(args.args[1])]
    elif len(args.args) == 1:
        recs = [jobs.get(args.args[0])]
    elif not args.args:
        recs = jobs.list()
    else:
        p.error("usage: jobs [JOB_ID] | jobs cancel JOB_ID")
    for rec in recs:
        if args.json:
            print(json.dumps(rec))
        else:
            show(rec)
    return 0
