"""The compilation pipeline: the stages that run inside a job's compile child.

    fetch      0-5%   InputConfig.S3Uri -> the job folder; a .tar.gz must hold exactly one model
                      file of the job's Framework (.onnx; .pt/.pth/.pt2; .tflite: agent.compile.frontends)
    prepare    5-15%  DataInputConfig checked or derived, Relax import by the Framework's frontend
    compile   15-45%  the target (device profile + CompilerOptions) -> layout, fusion, CPU schedules
                      by rule -> on-device tuning within the job's budget (agent.compile.tuning;
                      compile_model) -> TVM build -> model.so + metadata.json (model.tar of
                      objects when cross-compiled for another architecture: the device links
                      it when it loads it)
    verify    45-55%  TVM and the Framework's reference runtime (onnxruntime, torch, LiteRT) on the
                      same random inputs, each in its own process
    benchmark 55-90%  both engines timed with the agent's BenchConfig, same thread count
    package   90-95%  <model>-<target>.tar.gz = model.so + metadata.json + metrics.json

A cross-compiled job (the agent's cross_compile setting, a target this device is not) skips
verify and benchmark: nothing built for another device can be checked here, and metrics.json
says so ("measured": false, "not_measured": why).
    upload    95-100% to S3OutputLocation: <model>-<target>.tar.gz, then <model>-<target>.metrics.json
                      and <model>-<target>.log (the job's log so far); each verified in S3

In a compile child, prepare to benchmark (`stages`) run in a process of their own with no
network and no credentials (agent.runner.offline); fetch, the fleet's tuning records
(FleetRecords), package and upload stay in the child.

Transfers wait out storage outages until the job's deadline (agent.storage.retry), saying so in
the stage message. A job that fails after the fetch still uploads its log, when it can, so
the user finds why beside where the artifact would have been.

`run(job, config, workdir, report)` returns a Result, or raises a JobFailure whose reason
becomes the job's FailureReason. The keywords raised here (others come from the modules
called: storage, compile, bench):

    ClientError: InputConfiguration   not exactly one model file of the Framework in the archive;
                                      a Framework this device does not compile
    ClientError: VerificationFailed   TVM's outputs differ from the reference's beyond the agent's
                                      tolerances. A ClientError, as Neo's OperatorNotImplemented
                                      is: retrying cannot help, and the remedies (another export
                                      of the model, a looser tolerance) are the user's.

The job folder holds input/ (the download), model/ (unpacked), artifact/ (model.so,
metadata.json, metrics.json), verify/ (the .npz tensors) and out/ (the archive). metrics.json
is a contract: see agent.metrics.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from agent import metrics as metrics_contract
from agent.config import AgentConfig
from agent.errors import ClientError, JobFailure
from agent.jobs.job import Job

log = logging.getLogger(__name__)

# Where each stage starts and ends on the job's 0-100 progress scale.
STAGES = {
    "fetch": (0.0, 5.0),
    "prepare": (5.0, 15.0),
    "compile": (15.0, 45.0),
    "verify": (45.0, 55.0),
    "benchmark": (55.0, 90.0),
    "package": (90.0, 95.0),
    "upload": (95.0, 100.0),
}
MAX_MODEL_BYTES = 4 * 2**30  # the download; ONNX itself stops at 2 GiB without external data
MAX_EXTRACTED_BYTES = 8 * 2**30
MAX_ARCHIVE_MEMBERS = 10_000
INPUT_SEED = 0
ARTIFACT_FILES = ("model.so", "metadata.json", "metrics.json")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".onnx", ".pt2", ".pth", ".pt", ".tflite")
FAILURE_LOG_PATIENCE_S = 30.0  # how long a failed job waits for storage to take its log


class Reporter(Protocol):
    log_path: Path | None  # the job's log file, uploaded beside the artifact; None: no log

    def stage(self, stage: str, percent: float, message: str = "") -> None: ...
    def derived(self, data_input_config: str) -> None: ...


@dataclasses.dataclass
class Result:
    artifact_uri: str
    artifact_digest: str
    metrics: dict
    local_artifact: Path


class _Progress:
    """Stage announcements with percent that never goes backwards."""

    def __init__(self, report: Reporter):
        self.report = report
        self.percent = 0.0
        self.stage = "fetch"

    def __call__(self, stage: str, fraction: float = 0.0, message: str = "") -> None:
        self.stage = stage
        start, end = STAGES[stage]
        self.percent = max(self.percent, start + (end - start) * min(max(fraction, 0.0), 1.0))
        self.report.stage(stage, round(self.percent, 1), message)

    def follow(self, stage: str, percent: float, message: str = "") -> None:
        """Pass on a stage report of another process's _Progress (agent.runner.offline)."""
        self.stage = stage
        self.percent = max(self.percent, float(percent))
        self.report.stage(stage, round(self.percent, 1), message)


def run(job: Job, config: AgentConfig, workdir: Path, report: Reporter, *, offline: bool = False) -> Result:
    """Every stage, in order; see the module docstring. `offline`: prepare, compile, verify and
    benchmark run in a process of their own with no network (agent.runner.offline), as the
    compile child runs them; else in this process."""
    from agent.storage import Patience

    workdir = Path(workdir)
    progress = _Progress(report)
    deadline = (job.start_time or time.time()) + job.max_runtime
    # Waiting for storage is announced in the current stage's message; it never moves percent.
    patience = Patience(deadline=deadline, on_wait=lambda message: progress(progress.stage, 0, message))
    storage = JobStorage(job, config)
    progress("fetch", 0, f"downloading {_redacted(job.input_config.get('S3Uri', ''))}")
    model_path, stem = fetch(job, workdir, patience, client=storage.client("InputConfig"))
    name = f"{stem}-{target_name(job.output_config)}"
    try:
        return _compile_and_publish(job, config, workdir, progress, patience, model_path, name, storage, offline)
    except JobFailure as failure:
        _upload_log_after(failure, job.output_config, name, report, deadline, storage.client("OutputConfig"))
        raise


class JobStorage:
    """The job's S3 client, made once and only for s3:// locations, with this device's
    credentials for the job's RoleArn (agent.storage.credentials has the order)."""

    def __init__(self, job: Job, config: AgentConfig):
        self.job, self.config = job, config
        self._client = None

    def client(self, member: str):
        uri = self.job.request.get(member, {}).get("S3OutputLocation" if member == "OutputConfig" else "S3Uri", "")
        if not str(uri).startswith("s3://"):
            return None
        if self._client is None:
            from agent.storage import credentials, s3

            self._client = credentials.s3_client(self.config.s3, role_arn=self.job.request.get("RoleArn"),
                                                 config=s3.client_config())
        return self._client


def _compile_and_publish(job: Job, config: AgentConfig, workdir: Path, progress: _Progress, patience,
                         model_path: Path, name: str, storage: JobStorage, offline: bool) -> Result:
    fleet = FleetRecords.pull(job, config, progress, patience.deadline)
    if offline:
        from agent.runner import offline as offline_process

        metrics, library = offline_process.run(job, config, workdir, model_path, progress, patience.deadline)
    else:
        metrics, library = stages(job, config, workdir, model_path, progress, patience.deadline)
    if fleet is not None:
        fleet.push(metrics["tuning"], progress)
    return _package_and_upload(metrics, workdir / "artifact", library, name, workdir, job.output_config,
                               progress, patience, storage)


def stages(job: Job, config: AgentConfig, workdir: Path, model_path: Path, progress: "_Progress",
           deadline: float) -> tuple[dict, str]:
    """prepare, compile, verify and benchmark: everything that reads the model, nothing that
    needs the network. Returns (metrics, the library's file name in workdir/artifact)."""
    from agent.compile import build, datainput, frontends, target

    report = progress.report
    framework = job.input_config.get("Framework", "ONNX")
    reference = frontends.frontend(framework).reference

    progress("prepare", 0, f"reading {model_path.name}")
    imported = frontends.load_and_import(framework, model_path, job.input_config.get("DataInputConfig"),
                                         job.input_config.get("FrameworkVersion"))
    if imported.derived_config is not None:
        report.derived(imported.derived_config)
    progress("prepare", 1, f"inputs {_shapes_text(imported.inputs)}")

    output_config = job.output_config
    resolution = target.resolve(output_config, allow_cross=config.cross_compile)
    tvm_target, target_desc = target.tvm_target(resolution)
    layout = resolution.options.get("layout", build.DEFAULT_LAYOUT)
    where = "this device" if resolution.native else f"{resolution.profile.label}, cross-compiled"
    progress("compile", 0, f"building for {where}: {target_desc['mcpu']} ({target_desc['num-cores']} cores), {layout}")
    artifact = workdir / "artifact"
    built = compile_model(imported.mod, tvm_target, target_desc, resolution, artifact, layout=layout,
                          config=config, deadline=deadline, progress=progress)
    breakdown = {**imported.seconds, **built.seconds}
    _write_json(artifact / "metadata.json", _metadata(job, framework, imported, target_desc, built.path.name))
    progress("compile", 1, f"built in {sum(built.seconds.values()):.1f} s; {_schedule_text(built.schedule)}"
                           f"{_tuning_text(built.tuning)}")

    metrics = {
        "verification": None, "compile_seconds": round(sum(breakdown.values()), 3),
        "compile_breakdown_s": {k: round(v, 3) for k, v in breakdown.items()},
        "compile_peak_rss_mb": _peak_rss_mb(),
        "target": target_desc, "device": target.device_description(), "threads": config.bench.threads,
        "tuned": built.tuned, "schedule": built.schedule, "tuning": built.tuning,
        "method": metrics_contract.method(config.bench), "versions": metrics_contract.versions(),
        "inputs": [s.to_dict() for s in imported.inputs], "outputs": [s.to_dict() for s in imported.outputs],
        "data_input_config": datainput.to_json(imported.shapes), "derived": imported.derived_config is not None,
        "measured": resolution.native, "framework": framework, "reference_engine": reference,
    }
    if reference != "onnxruntime":
        metrics["onnxruntime_absent"] = (f"the model is {framework}, which onnxruntime does not run; its reference "
                                      f"is {reference} (see reference, speedup_vs_reference)")
    if not resolution.native:
        metrics["not_measured"] = (f"cross-compiled for {resolution.profile.label} on {target.this_device().sentence}; "
                                   "its outputs and speed can only be checked on that device")
        return metrics, built.path.name
    progress("verify", 0, f"running TVM and {reference} on the same inputs")
    inputs_npz = _make_inputs(workdir / "verify", imported.inputs)
    metrics["verification"] = verify(model_path, artifact, inputs_npz, config, deadline,
                                     [s.name for s in imported.outputs], reference=reference)
    if not metrics["verification"]["passed"]:
        _write_json(artifact / "metrics.json", _ordered(metrics))
        failure = ClientError("VerificationFailed", _mismatch_text(metrics["verification"], reference))
        failure.metrics = _ordered(metrics)
        raise failure
    progress("verify", 1, f"outputs match (max abs error {metrics['verification']['max_abs_error']:.3g})")

    from agent.bench import run_engine

    for index, engine in enumerate((reference, "tvm")):
        progress("benchmark", index / 2, f"timing {engine}")
        source = artifact if engine == "tvm" else model_path
        metrics["tvm" if engine == "tvm" else "reference"] = metrics_contract.engine_metrics(run_engine(
            engine, source, inputs_npz, threads=config.bench.threads, bench=config.bench,
            timeout_s=_remaining(deadline)))
    metrics["speedup_vs_reference"] = metrics_contract.speedup(metrics["tvm"], metrics["reference"])
    if reference == "onnxruntime":  # the same numbers under the keys ONNX jobs always had
        metrics["onnxruntime"] = metrics["reference"]
        metrics["speedup_vs_onnxruntime"] = metrics["speedup_vs_reference"]
    progress("benchmark", 1, _latency_text(metrics))
    return metrics, built.path.name


def _package_and_upload(metrics: dict, artifact: Path, library: str, name: str, workdir: Path,
                        output_config: dict, progress: _Progress, patience, storage: "JobStorage") -> Result:
    metrics = _ordered(metrics)
    progress("package", 0, f"packing {name}.tar.gz")
    archive, digest = package(artifact, metrics, workdir / "out" / f"{name}.tar.gz", library=library)

    progress("upload", 0, f"uploading to {output_config.get('S3OutputLocation', '')}")
    stored = upload(archive, artifact / "metrics.json", output_config, name, patience=patience,
                    log_path=progress.report.log_path, client=storage.client("OutputConfig"),
                    on_part=lambda done, total: progress("upload", 0.9 * done / total,
                                                         f"uploaded part {done} of {total}"))
    progress("upload", 1, f"uploaded {stored.uri} ({stored.size} bytes, verified by {stored.verified_by})")
    return Result(artifact_uri=stored.uri, artifact_digest=digest, metrics=metrics, local_artifact=archive)


# --- stages --------------------------------------------------------------------------------
def compile_model(mod: Any, tvm_target: Any, target_desc: dict, resolution: Any, artifact: Path, *,
                  layout: str, config: AgentConfig, deadline: float, progress: "_Progress"):
    """Rule schedules, then on-device tuning within the job's budget (agent.compile.tuning):
    the request's tuning options and the agent's [tuning] settings decide how long; the
    tuning database, when kept, supplies what earlier jobs tuned and keeps what this one does
    (the fleet's records were pulled into it before: FleetRecords).
    Returns the TunedBuild; its .tuning is metrics.json's "tuning"."""
    from agent.compile import target, tuning

    budget = tuning.job_budget(resolution.options, config.tuning, deadline - time.time())
    database = None
    if config.tuning.database:
        database = tuning.open_database(config.state_dir, resolution.profile.name, target_desc,
                                        max_mb=config.tuning.max_database_mb)
    started = time.time()

    def on_progress(message: str) -> None:
        fraction = min(0.95, (time.time() - started) / budget.seconds) if budget.seconds else 0.0
        progress("compile", fraction, message)

    if budget.tunes:
        on_progress(f"tuning for up to {budget.seconds:.0f} s"
                    f"{f' or {budget.trials} trials' if budget.trials else ''} ({budget.source})")
    built = tuning.tune_and_build(mod, tvm_target, artifact, budget_s=budget.seconds, trials=budget.trials,
                                  database=database, layout=layout, linkable=target.runs_here(target_desc),
                                  progress=on_progress)
    built.tuning["budget"] = budget.to_dict()
    return built


class FleetRecords:
    """The fleet's tuning records (tuning.share_uri): pulled into this device's database before
    the stages that tune, pushed after them, by the compile child, which has the network (the
    stages may not: agent.runner.offline). Needs no TVM: the database's key is the target's
    JSON description."""

    def __init__(self, database: Any, uri: str, client: Any, report: dict[str, Any]):
        self.database, self.uri, self.client, self.report = database, uri, client, report

    @classmethod
    def pull(cls, job: Job, config: AgentConfig, progress: "_Progress", deadline: float) -> "FleetRecords | None":
        """None when the agent shares no records or this job tunes nothing."""
        from agent.compile import target, tuning

        if not (config.tuning.database and config.tuning.share_uri):
            return None
        resolution = target.resolve(job.output_config, allow_cross=config.cross_compile)
        if not tuning.job_budget(resolution.options, config.tuning, deadline - time.time()).tunes:
            return None
        database = tuning.open_database(config.state_dir, resolution.profile.name, resolution.tvm_config(),
                                        max_mb=config.tuning.max_database_mb)
        progress("prepare", 0, f"pulling the fleet's tuning records from {config.tuning.share_uri}")
        client = _share_client(config)
        return cls(database, config.tuning.share_uri, client, _share(database, "pull", config.tuning.share_uri, client))

    def push(self, tuning_report: dict[str, Any], progress: "_Progress") -> None:
        """Push when this job measured anything; the outcome goes into `tuning_report` ("shared")."""
        if tuning_report.get("trials_measured"):
            progress("package", 0, f"pushing tuning records to {self.uri}")
            self.report.update(_share(self.database, "push", self.uri, self.client))
        tuning_report["shared"] = self.report


SHARE_PATIENCE_S = 60.0  # sharing is worth a minute of an S3 outage, not the job


def _share_client(config: AgentConfig):
    """The device's own S3 client for tuning.share_uri (None for a file:// prefix)."""
    if not config.tuning.share_uri.startswith("s3://"):
        return None
    from agent.storage import credentials, s3

    return credentials.s3_client(config.s3, config=s3.client_config())


def _share(database: Any, direction: str, uri: str, client: Any) -> dict[str, Any]:
    """Pull or push the fleet's records; a failure is reported in metrics and the log, and the
    job goes on with this device's own records (sharing only saves tuning time)."""
    from agent.storage import Patience

    try:
        count = getattr(database, direction)(uri, patience=Patience.for_seconds(SHARE_PATIENCE_S), client=client)
    except JobFailure as failure:
        log.warning("could not %s tuning records at %s: %s", direction, uri, failure.reason)
        return {"uri": uri, f"{direction}_error": failure.reason}
    return {"uri": uri, f"{direction}ed_workloads": count}


def fetch(job: Job, workdir: Path, patience=None, client=None) -> tuple[Path, str]:
    """Download the model; returns (path of the one model file, the name stem for the artifact)."""
    from agent.compile import frontends
    from agent.storage import download, parse, safe_extract

    framework = job.input_config.get("Framework", "ONNX")
    entry = frontends.frontend(framework)
    uri = job.input_config.get("S3Uri", "")
    location = parse(uri)
    filename = PurePosixPath(location.key or location.path or "").name or "model.tar.gz"
    fetched = download(uri, workdir / "input" / filename, max_bytes=MAX_MODEL_BYTES, patience=patience,
                       client=client)
    log.info("fetched %s: %d bytes, checked by %s", location.redacted(), fetched.size, fetched.check)
    downloaded = fetched.path
    stem = _stem(filename)
    if filename.lower().endswith(entry.suffixes):
        return downloaded, stem
    files = safe_extract(downloaded, workdir / "model", max_total_bytes=MAX_EXTRACTED_BYTES,
                         max_members=MAX_ARCHIVE_MEMBERS)
    root = workdir / "model"
    return frontends.find_model([f for f in files if not _is_junk(f.relative_to(root))], framework, root), stem


def verify(model_path: Path, artifact: Path, inputs_npz: Path, config: AgentConfig, deadline: float,
           output_names: list[str], reference: str = "onnxruntime") -> dict[str, Any]:
    """Both engines on the same inputs; the comparison report (see agent.bench.verify)."""
    from agent.bench import compare, load_npz, run_engine

    folder = inputs_npz.parent
    outputs = {}
    for engine, source in ((reference, model_path), ("tvm", artifact)):
        npz = folder / f"{engine}-outputs.npz"
        run_engine(engine, source, inputs_npz, threads=config.bench.threads, outputs_npz=npz,
                   timeout_s=_remaining(deadline))
        outputs[engine] = list(load_npz(npz).values())
    report = compare(outputs["tvm"], outputs[reference], rtol=config.verify.rtol, atol=config.verify.atol)
    return metrics_contract.verification(report, output_names)


def package(artifact: Path, metrics: dict, out: Path, library: str = "model.so") -> tuple[Path, str]:
    """metrics.json into the artifact folder, then the deterministic archive and its BLAKE2b."""
    from agent.storage import digest, pack

    _write_json(artifact / "metrics.json", metrics)
    archive = pack({name: artifact / name for name in (library, *ARTIFACT_FILES[1:])}, out)
    return archive, digest(archive)


def upload(archive: Path, metrics_json: Path, output_config: dict, name: str, *, patience=None,
           log_path: Path | None = None, on_part=None, client=None):
    """The archive, then `<name>.metrics.json` and `<name>.log` beside it; returns the archive's
    Stored (agent.storage.s3), verified in S3."""
    from agent.storage import join
    from agent.storage import upload as put

    location, kms = output_config.get("S3OutputLocation", ""), output_config.get("KmsKeyId")
    stored = put(archive, join(location, archive.name), kms_key_id=kms, patience=patience, on_part=on_part,
                 client=client)
    put(metrics_json, join(location, f"{name}.metrics.json"), kms_key_id=kms, patience=patience, client=client)
    if log_path is not None:
        upload_log(log_path, output_config, name, patience, client)
    return stored


def upload_log(log_path: Path, output_config: dict, name: str, patience, client=None) -> None:
    """A snapshot of the job's log (it is still being written) as `<name>.log`."""
    from agent.storage import join
    from agent.storage import upload as put

    if not Path(log_path).is_file():
        return
    snapshot = Path(log_path).with_name(f"{name}.log")
    shutil.copyfile(log_path, snapshot)
    try:
        put(snapshot, join(output_config.get("S3OutputLocation", ""), snapshot.name),
            kms_key_id=output_config.get("KmsKeyId"), patience=patience, client=client)
    finally:
        snapshot.unlink(missing_ok=True)


def _upload_log_after(failure: JobFailure, output_config: dict, name: str, report: Reporter,
                      deadline: float, client) -> None:
    """Best effort, briefly: the job has failed already and must say so before its deadline."""
    from agent.storage import Patience

    if report.log_path is None or failure.keyword in ("OutputConfiguration", "ClientPermission",
                                                      "StorageUnreachable", "StorageCredentials"):
        return  # the output side is what failed: trying it again would only delay the verdict
    patience = Patience(deadline=min(deadline, time.time() + FAILURE_LOG_PATIENCE_S), margin_s=0)
    try:
        upload_log(report.log_path, output_config, name, patience, client)
    except JobFailure as exc:
        log.warning("could not upload the log of the failed job: %s", exc.reason)


# --- helpers -------------------------------------------------------------------------------
def target_name(output_config: dict) -> str:
    """TargetDevice (ml_c5, rasp4b, ...) or OS_ARCH for a TargetPlatform, as artifact names read."""
    if output_config.get("TargetDevice"):
        return str(output_config["TargetDevice"])
    platform_ = output_config.get("TargetPlatform") or {}
    if platform_:
        parts = [platform_.get("Os", "LINUX"), platform_.get("Arch", "")]
        return "_".join(p for p in parts + [platform_.get("Accelerator", "")] if p)
    import platform as host

    from agent.compile.target import MACHINE_ARCH

    return f"LINUX_{MACHINE_ARCH.get(host.machine().lower(), host.machine().upper())}"


def _redacted(uri: str) -> str:
    """A URI fit for progress messages: a presigned URL's signature stays out of events and logs."""
    from agent.storage import parse

    try:
        return parse(uri).redacted()
    except ClientError:
        return "(invalid URI)"


def _stem(filename: str) -> str:
    lower = filename.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return filename or "model"


def _is_junk(rel: Path) -> bool:
    """macOS tar adds ._name resource forks and __MACOSX/; they are not models."""
    return rel.name.startswith("._") or "__MACOSX" in rel.parts


def _make_inputs(folder: Path, specs: list) -> Path:
    from agent.bench import make_inputs, save_npz

    folder.mkdir(parents=True, exist_ok=True)
    return save_npz(folder / "inputs.npz", make_inputs([s.to_dict() for s in specs], seed=INPUT_SEED))


def _metadata(job: Job, framework: str, imported: Any, target_desc: dict, library: str) -> dict:
    """metadata.json: what agent.runtime needs to load and check, and where the artifact came from."""
    from agent.compile import datainput

    return {
        "format": "neo-edge-agent/1",
        "library": library,
        "entry": "main",
        "framework": framework,
        "inputs": [s.to_dict() for s in imported.inputs],
        "outputs": [s.to_dict() for s in imported.outputs],
        "data_input_config": datainput.to_json(imported.shapes),
        "opset": imported.opset if framework == "ONNX" else None,
        "target": target_desc,
        "versions": metrics_contract.versions(),
        "created_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "job": {"name": job.name, "arn": job.arn},
        "request": _shareable_request(job.request),
    }


def _shareable_request(request: dict) -> dict:
    """The request as the artifact carries it, which goes wherever the artifact goes: without a
    presigned URL's query string, whose signature (and session token) would fetch the model
    for anyone until the URL expires."""
    shared = json.loads(json.dumps(request))
    for member, key in (("InputConfig", "S3Uri"), ("OutputConfig", "S3OutputLocation")):
        config = shared.get(member)
        uri = config.get(key) if isinstance(config, dict) else None
        if isinstance(uri, str) and uri.lower().startswith(("https://", "http://")) and "?" in uri:
            config[key] = uri.split("?", 1)[0]
    return shared


def _ordered(metrics: dict) -> dict:
    """The contract's keys first, in the documented order; the rest after."""
    head = {key: metrics.get(key) for key in metrics_contract.CONTRACT_KEYS}
    return {**head, **{k: v for k, v in metrics.items() if k not in head}}


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far: what the compile stage needed here.

    Linux's VmHWM, which counts from this process's exec; getrusage's ru_maxrss would also
    count the agent's size at the fork that started it. MetaSchedule's builder and runner
    workers are processes of their own and not counted.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _remaining(deadline: float) -> float:
    """Time left for a worker; the child's own alarm ends the job at the deadline anyway."""
    return max(1.0, deadline - time.time())


def _mismatch_text(report: dict, reference: str = "onnxruntime") -> str:
    bad = next((o for o in report.get("outputs", []) if not o.get("passed")), None)
    if report.get("error"):
        return f"TVM's outputs do not match {reference}'s: {report['error']}"
    if bad and bad.get("error"):
        return f"TVM's output {bad.get('name')!r} does not match {reference}'s: {bad['error']}"
    where = f"output {bad.get('name')!r}: " if bad else ""
    abs_err = bad.get("max_abs_error") if bad else report.get("max_abs_error")
    count = f"{bad['mismatched']} of {bad['elements']} elements" if bad else "some elements"
    return (f"TVM's outputs differ from {reference}'s on the same inputs; {where}max abs error "
            f"{_num(abs_err)} > tolerance (atol {report['atol']:g} + rtol {report['rtol']:g} * |reference|) "
            f"in {count}")


def _num(value: float | None) -> str:
    return "inf/nan" if value is None else f"{value:.3g}"


def _shapes_text(specs: list) -> str:
    return ", ".join(f"{s.name} {list(s.shape)}" for s in specs)


def _schedule_text(report: dict) -> str:
    kinds = ", ".join(f"{n} {kind}" for kind, n in report["by_kind"].items() if n)
    return f"{report['functions']} kernels scheduled by rule ({kinds})"


def _tuning_text(report: dict) -> str:
    if report.get("trials_measured"):
        latency = report.get("latency_ms") or {}
        change = (f", {latency['start_ms']:.2f} -> {latency['final_ms']:.2f} ms"
                  if latency.get("start_ms") and latency.get("final_ms") else "")
        return (f"; tuned {len(report.get('tuned_kernels') or [])} kernels in {report.get('tuning_seconds', 0):.0f} s "
                f"({report['trials_measured']} trials{change})")
    if report.get("tuned_kernels"):
        return f"; {len(report['tuned_kernels'])} kernels from the tuning database"
    return ""


def _latency_text(metrics: dict) -> str:
    try:
        return (f"p50 tvm {metrics['tvm']['latency_ms']['p50']:.3f} ms, {metrics['reference_engine']} "
                f"{metrics['reference']['latency_ms']['p50']:.3f} ms")
    except (KeyError, TypeError):
        return "benchmark done"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
