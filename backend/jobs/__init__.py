"""Pre-annotate a whole Label Studio project: jobs on RQ (docs/jobs.md).

* :mod:`.spec`: a job = project + filter, split into chunks of task ids;
* :mod:`.store`: the job record in Redis (progress sets, failures, status, the one-running-job lock);
* :mod:`.queue`: start / status / cancel / retry-failed, each chunk an RQ job;
* :mod:`.lsclient`: Label Studio through label-studio-sdk (tasks, label config, bulk predictions);
* :mod:`.runner`: one chunk: prefetch images, predict, post once per task;
* :mod:`.worker`: ``python -m backend worker``, a non-forking RQ worker that keeps the engine loaded;
* :mod:`.cli`, :mod:`.http`, :mod:`.metrics`: the three ways to start and watch a job.
"""
