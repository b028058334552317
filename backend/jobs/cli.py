"""``python -m backend preannotate|jobs|worker``: start, watch and cancel jobs from a shell.

    python -m backend preannotate --project 3 [--tasks 1,2,7-9] [--only-outdated | --all] [--view 5] [--wait]
    python -m backend preannotate --retry-failed JOB_ID [--wait]
    python -m backend jobs [JOB_ID] [--json]
    python -m backend jobs cancel JOB_ID
    python -m backend worker [--burst]

They read ``REDIS_URL``, ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` like the backend.
Exit status: 0 the job finished without failed tasks (or, ``jobs JOB_ID``, is not over yet), 1 the
job failed or was cancelled, 2 bad input / configuration, 3 conflict (a job for the same project
and filter is running; its id is printed), 4 the job finished with failed tasks (``jobs JOB_ID``
lists them; ``preannotate --retry-failed JOB_ID``). ``--wait`` and ``jobs`` warn on stderr when no
worker has been seen for ``2 x CASS_JOB_MAINTENANCE_S`` (60 s by default).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from backend.jobs.spec import JobSpec, JobSpecError, parse_task_ids

COMMANDS = ("preannotate", "jobs", "worker")
EXIT_OK, EXIT_JOB_FAILED, EXIT_BAD_INPUT, EXIT_CONFLICT, EXIT_FAILED_TASKS = 0, 1, 2, 3, 4
POLL_S = 1.0
OVER = ("finished", "cancelled", "failed")


def _jobs():
    from backend.config import Settings
    from backend.labelstudio.client import Projects
    from backend.jobs.queue import Jobs, connect

    settings = Settings.from_env()
    return Jobs(connect(settings.redis_url),
                Projects(settings.label_studio_url or "", settings.label_studio_api_key or ""), settings)


def exit_code(rec: dict) -> int:
    """0 finished cleanly or not over, 1 failed/cancelled, 4 finished with failed tasks."""
    if rec["status"] in ("failed", "cancelled"):
        return EXIT_JOB_FAILED
    if rec["status"] == "finished" and rec["failed"]:
        return EXIT_FAILED_TASKS
    return EXIT_OK


def progress_line(rec: dict) -> str:
    """``14/40 (10 done, 3 to post, 2 failed, 2 skipped) | 2.00 tasks/s | ETA 13s | running`` (done: per
    task predicted, ``to post`` of them wait for their bulk post; rate and ETA as
    :func:`backend.jobs.watch.throughput` measures them, in the record from ``Jobs.get``)."""
    from backend.jobs.watch import duration

    processed = rec["done"] + rec["skipped"] + rec["failed"]
    rate, eta = rec.get("rate_tasks_per_s"), rec.get("eta_s")
    posting = f", {rec['posting']} to post" if rec.get("posting") else ""
    return (f"{processed}/{rec['total']} ({rec['done']} done{posting}, {rec['failed']} failed, "
            f"{rec['skipped']} skipped) | "
            f"{'?' if rate is None else f'{rate:.2f}'} tasks/s | ETA {duration(eta)} | {rec['status']}")


def wait(jobs, job_id: str, out=None, err=None) -> dict:
    """A tqdm bar of the job's tasks (per task, as the workers record them) until it is over; a
    warning on ``err`` whenever no worker is seen (once per silence)."""
    from tqdm import tqdm

    out, err = out or sys.stdout, err or sys.stderr
    rec = jobs.get(job_id)
    warned = False
    with tqdm(total=rec["total"], file=out, unit="task", dynamic_ncols=True, mininterval=0,
              bar_format="{l_bar}{bar}| {postfix}") as bar:
        while True:
            bar.total = rec["total"]
            bar.n = rec["done"] + rec["skipped"] + rec["failed"]
            bar.set_postfix_str(progress_line(rec), refresh=True)
            if rec["status"] in OVER:
                return rec
            warning = jobs.workers()["warning"]
            if warning and not warned:
                bar.write(f"warning: {warning}", file=err)
            warned = bool(warning)
            time.sleep(POLL_S)
            rec = jobs.get(job_id)


def show(rec: dict, out=None) -> None:
    """One job: status, filter, counts, times (created, started, finished, took) and failed tasks."""
    from backend.jobs.watch import clock, duration

    out = out or sys.stdout
    spec = rec["spec"]
    took = (rec["finished"] or time.time()) - rec["started"] if rec.get("started") else None
    out.write(f"job {rec['id']}: {rec['status']}, project {spec['project']}"
              f"{', tasks ' + str(len(spec['task_ids'])) if spec.get('task_ids') else ''}"
              f"{', all tasks' if not spec.get('only_outdated', True) else ''}"
              f"{', retry of ' + spec['retry_of'] if spec.get('retry_of') else ''}: "
              f"{rec['done']} done, {rec['skipped']} skipped, {rec['failed']} failed of {rec['total']}"
              f"{', ' + rec['error'] if rec.get('error') else ''}\n"
              f"  created {clock(rec.get('created'))}, started {clock(rec.get('started'))}, "
              f"finished {clock(rec.get('finished'))}"
              f"{', took ' + duration(took) if took is not None else ''}\n")
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
        return EXIT_CONFLICT
    except (JobSpecError, ConfigError, LabelStudioError, JobNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


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
        return EXIT_OK
    rec = wait(jobs, rec["id"])
    show(rec)
    return exit_code(rec)


def jobs_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m backend jobs", description="list jobs, show one, cancel one")
    p.add_argument("args", nargs="*", help="[JOB_ID] | cancel JOB_ID")
    p.add_argument("--json", action="store_true", help="JSON output")
    args = p.parse_args(argv)
    jobs = _jobs()
    code = EXIT_OK
    if args.args and args.args[0] == "cancel":
        if len(args.args) != 2:
            p.error("usage: jobs cancel JOB_ID")
        recs = [jobs.cancel(args.args[1])]
    elif len(args.args) == 1:
        recs = [jobs.get(args.args[0])]
        code = exit_code(recs[0])
    elif not args.args:
        recs = jobs.list()
    else:
        p.error("usage: jobs [JOB_ID] | jobs cancel JOB_ID")
    for rec in recs:
        if args.json:
            print(json.dumps(rec))
        else:
            show(rec)
    if any(rec["status"] not in OVER for rec in recs):
        warning = jobs.workers()["warning"]
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    return code
