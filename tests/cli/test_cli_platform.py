"""The CLI on one machine: the local backend refuses what needs a cluster, dry runs chain the
stages as they really run, progress lines come from the trainer's heartbeats, and the data
verbs on a plain install say which extra to install."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eve_contract import layout
from eve_contract.storage import open_store
from eve_operator.cli import output, progress
from eve_operator.cli.main import app, pipeline_exit_code
from eve_operator.pipeline import PipelineStatus

runner = CliRunner()


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EVE_PLATFORM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this machine: no GPU
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # and no kube context
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("EVE_PLATFORM_BACKEND", raising=False)
    return tmp_path / "home"


def run(*args: str):  # noqa: ANN201
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(("args", "expected"), [
    (["nodes=4", "gpus_per_node=8"], "nodes=4 needs a cluster"),
    (["gpus_per_node=2"], "gpus_per_node=2, but this machine has 0 GPU(s)"),
    (["sft.data=s3://bkt/x", "--backend", "local", "nodes=2", "gpus_per_node=0"], "nodes=2 needs a cluster"),
])
def test_local_backend_refuses_what_needs_a_cluster(args: list[str], expected: str, _home: Path) -> None:
    # an explicit local backend refuses the dry run too: it plans nothing it cannot run
    for extra in ([], ["--dry-run", "--local"]):
        result = run("submit", "stage=prealign", "name=big", *args, *extra)
        assert result.exit_code == 2, result.output
        assert expected in result.output and "--backend kubernetes" in result.output
        assert "Traceback" not in result.output
    assert not (_home / "pipelines" / "big").exists()


def test_local_dry_run_chains_each_stage_from_the_previous_export(_home: Path) -> None:
    result = run("submit", "stage=prealign", "name=chain", "init_from=/models/llama", "output=s3://bkt/eve",
                 "nproc_per_node=2", "--dry-run", "-o", "json")
    assert result.exit_code == 0, result.output
    stages = json.loads(result.stdout)["stages"]
    assert [s["init_from"] for s in stages] == ["/models/llama", "s3://bkt/eve/chain/prealign/export",
                                                 "s3://bkt/eve/chain/pretrain/export"]
    assert stages[2]["config"]["init_from"] == "s3://bkt/eve/chain/pretrain/export"
    assert stages[1]["config"]["init_from"] == "s3://bkt/eve/chain/prealign/export"


def test_progress_from_the_heartbeat_contract(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/out")
    for rank, step in ((0, 120), (1, 118)):
        beat = layout.Heartbeat(rank=rank, step=step, total_steps=1000, attempt=2, loss=2.3141,
                                tokens_per_s=12345.0, eta_s=845.0 + rank, phase="train")
        store.put_bytes(layout.heartbeat_key("p", "pretrain", rank), beat.to_json())
    store.put_bytes(layout.heartbeat_key("p", "pretrain", 2),
                    layout.Heartbeat(rank=2, step=5, total_steps=1000, attempt=1).to_json())  # last attempt's
    now = progress.summarize(layout.read_heartbeats(store, "p", "pretrain"), attempt=2)
    assert now is not None and (now.step, now.total_steps, now.ranks) == (118, 1000, 2)
    assert progress.short(now) == "118/1000 (12%) loss 2.314 12.3k tok/s ETA 14m06s"
    obj = {"metadata": {"name": "p"}, "spec": {"output": f"file://{tmp_path}/out"},
           "status": {"phase": "Running", "stages": [{"name": "prealign", "state": "Succeeded"},
                                                     {"name": "pretrain", "state": "Running", "attempt": 2}]}}
    live = progress.live(obj)
    assert list(live) == ["pretrain"] and live["pretrain"]["progress"] == now
    assert progress.summarize([], None) is None


def test_the_validation_loss_travels_with_the_heartbeat_to_the_progress_line(tmp_path: Path) -> None:
    beat = layout.Heartbeat(rank=0, step=147, total_steps=300, loss=0.2331, tokens_per_s=10900.0, eta_s=31.0,
                            val_loss=0.24149, val_step=100)
    assert layout.Heartbeat.from_json(beat.to_json()) == beat
    old = json.loads(beat.to_json())  # a beat from a trainer before validation reached the heartbeat
    del old["val_loss"], old["val_step"]
    parsed = layout.Heartbeat.from_json(json.dumps(old).encode())
    assert (parsed.val_loss, parsed.val_step, parsed.loss) == (None, None, 0.2331)

    other = layout.Heartbeat(rank=1, step=146, total_steps=300, val_loss=9.9, val_step=100)  # rank 0's counts
    now = progress.summarize([other, beat])
    assert now is not None and (now.val_loss, now.val_step) == (0.24149, 100)
    assert now.to_json()["valLoss"] == 0.24149 and now.to_json()["valStep"] == 100
    assert progress.short(now) == "146/300 (49%) loss 0.233 val 0.241@100 10.9k tok/s ETA 31s"
    assert "val" not in progress.short(progress.summarize([parsed]))  # none yet: nothing shown
    validating = progress.summarize([layout.Heartbeat(rank=0, step=200, total_steps=300, phase="validation",
                                                      val_loss=0.24149, val_step=100)])
    assert progress.short(validating) == "200/300 (67%) val 0.241@100 validating"

    # `describe`'s Progress line and the stage table (a finished stage: its last validation loss)
    obj = {"metadata": {"name": "p"}, "spec": {"output": f"file://{tmp_path}/out"},
           "status": {"phase": "Running", "stages": [
               {"name": "prealign", "state": "Succeeded", "valLoss": 0.5123, "valStep": 40},
               {"name": "pretrain", "state": "Succeeded"},
               {"name": "sft", "state": "Running", "attempt": 1}]}}
    rows = output.stage_rows(obj, {"sft": {"progress": now}})
    assert [r[6] for r in rows] == ["val 0.512@40", "", progress.short(now)]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        output.describe(obj, {"sft": {"progress": now}})
    assert "Progress:    sft: step 146/300, loss 0.2331, validation loss 0.2415 at step 100, 10.9k tokens/s" \
        in out.getvalue()

    # the end-of-run table of `submit --local`: a VAL LOSS column once any stage had validation
    status = PipelineStatus.model_validate(obj["status"])
    headers, rows = output.summary_table(status.stages)
    assert headers[-1] == "VAL LOSS" and [r[-1] for r in rows] == ["0.5123 at step 40", "-", "-"]
    status.stages[0].val_loss = None
    assert output.summary_table(status.stages)[0] == ["STAGE", "STATE", "ATTEMPT", "CHECKPOINT"]


def test_exit_codes_of_a_finished_pipeline_come_from_the_failure_class_not_the_message() -> None:
    assert pipeline_exit_code({"phase": "Succeeded"}) == 0
    for cls, code in (("permanent", 2), ("transient", 1), ("stalled", 1), ("cancelled", 1)):
        assert pipeline_exit_code({"phase": "Failed", "failure": {"class": cls}}) == code
    # "exited with code 255" contains "exited with code 2": a retryable failure is still not the user's
    retryable = {"phase": "Failed", "message": "Pod: ml.x-master-0 exited with code 255 (attempt 2 of 2)",
                 "failure": {"class": "transient", "exitCode": 255}}
    assert pipeline_exit_code(retryable) == 1
    assert pipeline_exit_code({"phase": "Failed", "message": "invalid spec: spec.preset: ..."}) == 1  # no class: 1


@pytest.mark.parametrize(("verb", "missing"), [("synth", "Pillow, numpy and webdataset"),
                                               ("convert", "Pillow and webdataset")])
def test_data_verbs_on_a_plain_install_name_the_extra(verb: str, missing: str, tmp_path: Path) -> None:
    """As after a plain `pip install .`: Pillow, numpy and webdataset cannot be imported (sys.modules[...] = None)."""
    (tmp_path / "caps.jsonl").write_text('{"image": "a.png", "caption": "x"}\n')
    args = {"synth": [str(tmp_path / "synth")], "convert": [str(tmp_path / "caps.jsonl"), str(tmp_path / "o")]}
    script = ("import sys; sys.modules.update(PIL=None, numpy=None, webdataset=None); "
              "from eve_operator.cli.main import app; app()")
    proc = subprocess.run([sys.executable, "-c", script, "data", verb, *args[verb]], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"needs {missing}" in proc.stderr and "pip install 'eve-platform[data]'" in proc.stderr
    assert "Traceback" not in proc.stderr
