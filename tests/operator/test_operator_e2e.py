"""The operator against kmock's emulator and a real S3 server, end to end."""

from __future__ import annotations

from pathlib import Path

from conftest import NS, Cluster, Operator, base_spec, wait_for, write_export


def test_full_chain_prealign_pretrain_sft(cluster: Cluster, operator: Operator, output: str,
                                         tmp_path: Path) -> None:
    cluster.create_pipeline("demo", base_spec(output))
    job = wait_for(lambda: cluster.jobs().get("demo-prealign"), what="the prealign job")
    assert job["metadata"]["ownerReferences"][0]["name"] == "demo"
    assert wait_for(lambda: cluster.status("demo").get("phase") == "Running")
    for stage, nxt in (("prealign", "demo-pretrain"), ("pretrain", "demo-sft"), ("sft", None)):
        cluster.set_condition(f"demo-{stage}", "Running")
        wait_for(lambda s=stage: cluster.status("demo")["stages"][["prealign", "pretrain", "sft"].index(s)]
                 ["state"] == "Running", what=f"{stage} running")
        export = write_export(output, "demo", stage, tmp_path)
        cluster.set_condition(f"demo-{stage}", "Succeeded")
        if nxt:
            job = wait_for(lambda n=nxt: cluster.jobs().get(n), what=nxt)
            command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
            assert f"init_from={export}" in command
    status = wait_for(lambda: cluster.status("demo") if cluster.status("demo").get("phase") == "Succeeded" else None,
                      what="pipeline Succeeded")
    assert [s["state"] for s in status["stages"]] == ["Succeeded"] * 3
    assert status["stages"][2]["checkpoint"] == f"{output}/demo/sft/export"
    assert sorted(cluster.jobs()) == ["demo-prealign", "demo-pretrain", "demo-sft"]
    reasons = cluster.reasons("demo")
    assert reasons.count("StageSucceeded") == 3 and "PipelineSucceeded" in reasons
