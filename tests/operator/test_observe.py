"""The observer, as data: what a backend reports -> the state machine's Observation.

Both shells (the kopf loop and the local runner) hand it a StageReader; here the reader is
plain data, so each rule (which lookups a pass makes, Kueue, the permanent exit code, which
heartbeats count) is checked without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eve_contract import layout
from eve_contract.exit_codes import EXIT_USER
from eve_contract.layout import Heartbeat
from eve_contract.storage import LocalStore
from eve_operator.observe import JobReport, StoreReads, observe
from eve_operator.pipeline import Beat, PipelineStatus, StageComplete, decide
from eve_operator.spec import PipelineSpec


@dataclass
class Reader:
    jobs: dict[str, JobReport] = field(default_factory=dict)
    codes: list[int] = field(default_factory=list)
    exports: dict[str, StageComplete] = field(default_factory=dict)
    beats: list[Heartbeat] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    log_tail: str = ""

    def job(self, name: str) -> JobReport:
        self.asked.append(f"job {name}")
        return self.jobs.get(name, JobReport())

    def exit_codes(self, name: str) -> list[int]:
        self.asked.append(f"codes {name}")
        return self.codes

    def error_line(self, name: str) -> str:
        from eve_operator.observe import error_line

        return error_line(self.log_tail)

    def complete(self, stage: str) -> StageComplete | None:
        self.asked.append(f"complete {stage}")
        return self.exports.get(stage)

    def heartbeats(self, stage: str) -> list[Any]:
        self.asked.append(f"heartbeats {stage}")
        return self.beats


def spec(**extra: Any) -> PipelineSpec:
    return PipelineSpec.model_validate({"output": "s3://bkt/eve", **extra})


def submitted(sp: PipelineSpec) -> PipelineStatus:
    return decide("demo", sp, PipelineStatus(), observe(sp, PipelineStatus(), Reader()), 0.0).status


def test_a_stage_not_yet_submitted_asks_for_its_own_and_the_previous_export() -> None:
    sp = spec(start="pretrain")
    reader = Reader(exports={"prealign": StageComplete("s3://bkt/eve/demo/prealign/export")})
    obs = observe(sp, PipelineStatus.model_validate({"stages": [{"name": "pretrain"}, {"name": "sft"}]}), reader)
    assert reader.asked == ["complete prealign", "complete pretrain"]
    assert obs.previous_export == StageComplete("s3://bkt/eve/demo/prealign/export") and obs.complete is None
    reader = Reader()
    observe(spec(start="pretrain", initFrom="s3://xyz/llama"), PipelineStatus.model_validate(
        {"stages": [{"name": "pretrain"}]}), reader)
    assert reader.asked == ["complete pretrain"]  # init_from given: the previous export is not needed


def test_a_running_job_reads_the_current_attempt_heartbeats_and_no_manifest() -> None:
    sp = spec()
    status = submitted(sp)
    reader = Reader(jobs={"demo-prealign": JobReport("Running")},
                    beats=[Heartbeat(rank=0, step=7, total_steps=9, attempt=1, time=5.0),
                           Heartbeat(rank=1, step=3, total_steps=9, attempt=0, time=4.0)])
    obs = observe(sp, status, reader)
    assert reader.asked == ["job demo-prealign", "heartbeats prealign"]
    assert obs.job == "Running" and obs.complete is None
    assert obs.beats == (Beat(0, 7, 5.0, "train"),)  # the old attempt's beat does not count


def test_a_finished_job_looks_for_the_manifest_and_a_failed_one_for_exit_codes() -> None:
    sp = spec()
    status = submitted(sp)
    reader = Reader(jobs={"demo-prealign": JobReport("Succeeded", "", 3.0)})
    obs = observe(sp, status, reader)
    assert reader.asked == ["job demo-prealign", "complete prealign", "heartbeats prealign"]
    assert (obs.job, obs.job_finished_at, obs.job_exit_code) == ("Succeeded", 3.0, None)

    reader = Reader(jobs={"demo-prealign": JobReport("Failed", "pod master-0 failed")}, codes=[143, 1])
    obs = observe(sp, status, reader)
    assert reader.asked == ["job demo-prealign", "codes demo-prealign", "complete prealign", "heartbeats prealign"]
    assert obs.job == "Failed" and obs.job_exit_code != 2 and obs.job_message == "pod master-0 failed"


def test_the_trainer_usage_exit_code_is_permanent_and_said_so() -> None:
    sp = spec()
    reader = Reader(jobs={"demo-prealign": JobReport("Failed", "rank 1 exited")}, codes=[143, EXIT_USER])
    obs = observe(sp, submitted(sp), reader)
    assert obs.job_exit_code == 2 and "exited with 2: bad config or data" in obs.job_message


def test_kueue_suspension_reads_as_pending_unless_the_user_suspended() -> None:
    sp = spec(scheduling={"gangScheduler": "kueue", "queue": "q"})
    reader = Reader(jobs={"demo-prealign": JobReport("Suspended")})
    assert observe(sp, submitted(sp), reader).job == "Pending"
    sp_user = spec(scheduling={"gangScheduler": "kueue", "queue": "q"}, suspend=True)
    assert observe(sp_user, submitted(sp), reader).job == "Suspended"
    assert observe(spec(), submitted(spec()), reader).job == "Suspended"


def test_a_finished_pipeline_asks_nothing() -> None:
    sp = spec(until="prealign")
    status = submitted(sp)
    status.stages[0].state = "Succeeded"
    reader = Reader()
    assert observe(sp, status, reader).job == "Absent" and reader.asked == []


def test_a_permanent_failure_names_the_trainers_own_error_line() -> None:
    sp = spec()
    tail = ("2026-11-27 rank0 INFO eve_trainer: stage prealign\n"
            "eve-train: error: data.tokenizer: unknown builtin tokenizer 'builtin:nope'\n"
            "eve-launch[node 0]: ranks exited with [2]; exit 2\n")
    reader = Reader(jobs={"demo-prealign": JobReport("Failed", "pod master-0 failed")}, codes=[2], log_tail=tail)
    obs = observe(sp, submitted(sp), reader)
    assert obs.job_exit_code == 2
    assert obs.job_message.endswith("(the trainer exited with 2: eve-train: error: data.tokenizer: unknown builtin "
                                    "tokenizer 'builtin:nope')")


def test_the_stage_complete_manifest_carries_the_stage_end_validation_loss(tmp_path) -> None:  # noqa: ANN001
    store = LocalStore(tmp_path)
    for stage, extra in (("prealign", {"val_loss": 0.5123, "val_step": 40}), ("pretrain", {}),
                         ("sft", {"val_loss": float("nan"), "val_step": 40})):
        manifest = layout.Manifest(kind="stage-complete", pipeline="p", stage=stage, step=40, files=[],
                                   extra={"global_step": 40, **extra})
        store.put_bytes(f"{layout.export_prefix('p', stage)}/{layout.STAGE_COMPLETE}", manifest.to_json())
    reads = StoreReads("p", f"file://{tmp_path}", lambda: store)
    got = {s: reads.complete(s) for s in ("prealign", "pretrain", "sft")}
    assert (got["prealign"].val_loss, got["prealign"].val_step) == (0.5123, 40)
    assert (got["pretrain"].val_loss, got["pretrain"].val_step) == (None, None)  # no validation, or an older trainer
    assert got["sft"].val_loss is None  # NaN: not a value a status (JSON) can hold
