"""What a job leaves in the state directory, and the bound on it.

The rule (the README's "Files on disk" repeats it):

1. While a job runs, jobs/<name>/ holds spec.json, job.log and work/: the download, the unpacked
   model, the build, the packed artifact.
2. When the job ends, work/ is removed, except the packed artifact (work/out/*.tar.gz) of a job
   that did not finish its upload: that stays until the job is deleted, so nothing compiled is
   lost to an S3 outage. spec.json (no secrets in it) and job.log stay until the job is deleted.
   A job that an agent restart ended (FAILED: AgentRestart, or STOPPED) is tidied the same way
   by the next start, and rule 3 applies rule 2 again to every ended job first, so working files
   left by an agent that died between a job's end and its tidy go too.
3. The files of ended jobs may take at most `max_retained_mb` together. Past that, the oldest
   ended jobs lose their retained artifacts first, then their logs; each such job says so in its
   notes. Job records are never removed by this rule, only by DeleteCompilationJob.
4. A job starts only while the state directory's file system has `min_free_mb` free. Short of
   that, rule 3 runs with a bound of zero (every ended job's files may go) and, if that is not
   enough, the job fails at once with ServerError: InsufficientDiskSpace.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from agent.jobs.job import Job, Status
from agent.jobs.store import JobStore

log = logging.getLogger(__name__)

ENDED = (Status.COMPLETED, Status.FAILED, Status.STOPPED)


def retained_artifacts(job_dir: Path) -> list[Path]:
    out = job_dir / "work" / "out"
    return sorted(out.glob("*.tar.gz")) if out.is_dir() else []


def kept_artifacts(job_dir: Path, status: Status) -> list[Path]:
    """What rule 2 keeps of an ended job's work/: a COMPLETED job uploaded its artifact."""
    return [] if status == Status.COMPLETED else retained_artifacts(job_dir)


def leftovers(job_dir: Path, status: Status) -> list[Path]:
    """What rule 2 removes from an ended job's work/: everything but the artifacts it keeps."""
    work = job_dir / "work"
    if not work.is_dir():
        return []
    keep = kept_artifacts(job_dir, status)
    found: list[Path] = []
    for entry in work.iterdir():
        if entry.name == "out" and keep:
            found.extend(item for item in entry.iterdir() if item not in keep)
        else:
            found.append(entry)
    return found


def prune_ended(job_dir: Path, status: Status) -> list[Path]:
    """Rule 2; returns the artifacts kept. Safe to repeat: a tidy folder stays as it is."""
    keep = kept_artifacts(job_dir, status)
    for path in leftovers(job_dir, status):
        _remove(path)
    if not keep:
        _remove(job_dir / "work")
    return keep


def enforce_budget(store: JobStore, jobs_dir: Path, max_bytes: int, keep: str = "") -> int:
    """Rule 3: returns the bytes the ended jobs' files take afterwards. `keep`: a job to spare.

    Rule 2 first, for every ended job: working files an ended job should not have (its agent
    died before tidying it) are never worth keeping, so they go before any artifact or log.
    """
    ended = sorted((j for j in store.with_status(ENDED) if j.name != keep),
                   key=lambda j: (j.end_time or 0.0, j.name))
    for job in ended:
        folder = _dir(jobs_dir, job)
        left = leftovers(folder, job.status)
        if left:
            freed = sum(_size(p) for p in left)
            prune_ended(folder, job.status)
            log.info("removed the working files (%d bytes) left after the job ended", freed, extra={"job": job.name})
    sizes = {job.name: _size(_dir(jobs_dir, job)) for job in ended}
    total = sum(sizes.values())
    for kind in ("artifact", "log"):
        for job in ended:
            if total <= max_bytes:
                return total
            folder = _dir(jobs_dir, job)
            victims = retained_artifacts(folder) if kind == "artifact" else [folder / "job.log"]
            freed = sum(_size(p) for p in victims if p.exists())
            if not freed:
                continue
            for path in victims:
                _remove(path)
            total -= freed
            what = "its retained artifact" if kind == "artifact" else "its log"
            store.update(job.name, note=f"{what} was removed from this device to keep the state directory "
                                        f"within {max_bytes // 2**20} MiB")
            log.info("removed %s (%d bytes) for the disk budget", what, freed, extra={"job": job.name})
    return total


def free_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _dir(jobs_dir: Path, job: Job) -> Path:
    return jobs_dir / job.name.lower()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
