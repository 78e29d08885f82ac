"""The disk rule (agent/runner/housekeeping.py) where an agent restart meets it: a job the
restart ended is tidied like any ended job, and working files an ended job should no longer
have are freed. No child processes: the folders are laid out as a dead agent leaves them."""
from __future__ import annotations

from pathlib import Path

from agent.jobs.job import Status
from agent.jobs.store import JobStore
from agent.runner import housekeeping
from agent.runner.runner import Runner
from tests.runner.conftest import make_config, scripted_job

MIB = 2**20
ARTIFACT = "model-ml_c5.tar.gz"


def lay_out(folder: Path, *work_files: str) -> None:
    """A job's folder as a compile child leaves it: spec.json, job.log and `work_files` under work/."""
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text("{}")
    (folder / "job.log").write_text("stage=fetch\n")
    for relative in work_files:
        path = folder / "work" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * MIB)


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_jobs_an_agent_restart_ends_are_tidied_like_any_ended_job(tmp_path):
    config = make_config(tmp_path)
    store = JobStore(config.db_path)
    try:
        for name, stage in (("cut-off", "upload"), ("was-stopping", "compile"), ("ended-untidied", "upload")):
            store.create(scripted_job(name, ""))
            store.transition(name, Status.INPROGRESS, start_time=1.0, stage=stage, pid=None)
        store.transition("was-stopping", Status.STOPPING)
        # Ended in the last life, but the agent died before tidying it.
        store.transition("ended-untidied", Status.COMPLETED, end_time=2.0)
        lay_out(config.job_dir("cut-off"), "input/model.tar.gz", "model/model.onnx", "artifact/model.so",
                f"out/{ARTIFACT}")
        lay_out(config.job_dir("was-stopping"), "input/model.tar.gz", "model/model.onnx")
        lay_out(config.job_dir("ended-untidied"), "input/model.tar.gz", f"out/{ARTIFACT}")

        Runner(store, config).recover()

        cut_off = store.get("cut-off")
        assert cut_off.status == Status.FAILED and cut_off.failure_reason.startswith("ServerError: AgentRestart:")
        assert files_under(config.job_dir("cut-off")) == {"spec.json", "job.log", f"work/out/{ARTIFACT}"}, \
            "the download, model and build go; the artifact awaiting upload and the log stay"
        kept = config.job_dir("cut-off") / "work" / "out" / ARTIFACT
        assert any("stays on this device until the job is deleted" in n and str(kept) in n for n in cut_off.notes)

        assert store.get("was-stopping").status == Status.STOPPED
        assert files_under(config.job_dir("was-stopping")) == {"spec.json", "job.log"}
        assert not (config.job_dir("was-stopping") / "work").exists()

        assert files_under(config.job_dir("ended-untidied")) == {"spec.json", "job.log"}, \
            "a COMPLETED job uploaded its artifact: nothing of work/ is kept"
    finally:
        store.close()


def test_the_budget_frees_working_files_an_ended_job_still_has(tmp_path):
    config = make_config(tmp_path)
    store = JobStore(config.db_path)
    try:
        store.create(scripted_job("failed", ""))
        store.transition("failed", Status.FAILED, end_time=1.0, failure_reason="ServerError: x")
        lay_out(config.job_dir("failed"), "input/model.tar.gz", "model/model.onnx", f"out/{ARTIFACT}",
                "out/scratch.bin")
        bound = 10 * MIB  # well above what the job's kept files take: only leftovers go

        total = housekeeping.enforce_budget(store, config.jobs_dir, bound)

        assert files_under(config.job_dir("failed")) == {"spec.json", "job.log", f"work/out/{ARTIFACT}"}
        assert total == sum(p.stat().st_size for p in config.job_dir("failed").rglob("*") if p.is_file())
        assert not any("removed from this device" in n for n in store.get("failed").notes), \
            "leftover working files are not the kept artifact or log the notes speak of"
    finally:
        store.close()


def test_the_kept_artifact_and_log_go_only_past_the_bound_after_leftovers(tmp_path):
    config = make_config(tmp_path)
    store = JobStore(config.db_path)
    try:
        store.create(scripted_job("failed", ""))
        store.transition("failed", Status.FAILED, end_time=1.0, failure_reason="ServerError: x")
        lay_out(config.job_dir("failed"), "input/a.bin", "input/b.bin", f"out/{ARTIFACT}")
        # The leftovers (2 MiB) alone would bring the folder within 1.5 MiB: the artifact stays.
        total = housekeeping.enforce_budget(store, config.jobs_dir, int(1.5 * MIB))
        assert total <= 1.5 * MIB
        assert housekeeping.retained_artifacts(config.job_dir("failed"))
        assert (config.job_dir("failed") / "job.log").is_file()
        total = housekeeping.enforce_budget(store, config.jobs_dir, MIB // 2)
        assert not housekeeping.retained_artifacts(config.job_dir("failed"))
        assert "its retained artifact was removed" in store.get("failed").notes[-1]
    finally:
        store.close()
