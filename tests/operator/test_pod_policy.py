"""Issue 20: a pipeline cannot become a privileged pod, bypass the queue, or borrow the operator's identity.

Every escalation of the `restricted` profile (and the rules PSS lacks: ServiceAccounts, Secrets) is
tried as a podTemplate, per pipeline and per stage:
- through the pure checker (what admission and `--dry-run` run), naming the spec field;
- through the rendered PyTorchJob and TrainJob (the second check, on what the operator built);
- through the real operator on the emulated API server (a handful: status, condition, Event);
- through `eve-platform submit --dry-run` against the cluster's rules ConfigMap.
Each relaxation of the chart's `podPolicy` lets exactly its case through.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import NS, Cluster, running_operator, wait_for
from pod_security import baseline_violations, restricted_violations
from pydantic import ValidationError

from eve_operator import admission, metrics, pod_policy
from eve_operator.defaults import OperatorDefaults
from eve_operator.jobspec import build_job_spec
from eve_operator.pipeline import SubmitJob, job_name
from eve_operator.pod_policy import PodPolicy, check_job, check_pipeline
from eve_operator.pytorchjob import build_pytorchjob
from eve_operator.spec import PipelineSpec
from eve_operator.trainjob import build_trainjob
from eve_trainer.config import ConfigError

BASE = {"output": "s3://ckpt/eve", "overrides": {"global_batch_size": 256}, "until": "prealign"}
CSC, PSC = "containerSecurityContext", "securityContext"

#: name -> (podTemplate, the field path the refusal names (under spec.podTemplate), the relaxation that allows it)
ESCALATIONS: dict[str, tuple[dict[str, Any], str, dict[str, Any] | None]] = {
    "privileged": ({CSC: {"privileged": True}}, f"{CSC}.privileged", {"allowPrivileged": True}),
    "root-user": ({PSC: {"runAsUser": 0}}, f"{PSC}.runAsUser", {"allowRunAsRoot": True}),
    "run-as-non-root-false": ({PSC: {"runAsNonRoot": False}}, f"{PSC}.runAsNonRoot", {"allowRunAsRoot": True}),
    "container-root": ({CSC: {"runAsUser": 0, "runAsNonRoot": False}}, f"{CSC}.runAsUser", {"allowRunAsRoot": True}),
    "cap-sys-admin": ({CSC: {"capabilities": {"add": ["SYS_ADMIN"]}}}, f"{CSC}.capabilities.add[0]",
                      {"allowedCapabilities": ["SYS_ADMIN"]}),
    "cap-drop-nothing": ({CSC: {"capabilities": {"drop": []}}}, f"{CSC}.capabilities.drop", {"profile": "baseline"}),
    "privilege-escalation": ({CSC: {"allowPrivilegeEscalation": True}}, f"{CSC}.allowPrivilegeEscalation",
                             {"allowPrivilegeEscalation": True}),
    "host-path-root": ({"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}, "volumes[0].hostPath",
                       {"allowedHostPaths": ["/"]}),
    "nfs-volume": ({"volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]}, "volumes[0].nfs",
                   {"allowedVolumeTypes": ["nfs"]}),
    "seccomp-unconfined-pod": ({PSC: {"seccompProfile": {"type": "Unconfined"}}}, f"{PSC}.seccompProfile.type",
                               {"allowUnconfinedSeccomp": True}),
    "seccomp-unconfined-container": ({CSC: {"seccompProfile": {"type": "Unconfined"}}},
                                     f"{CSC}.seccompProfile.type", {"allowUnconfinedSeccomp": True}),
    "unsafe-sysctl": ({PSC: {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}, f"{PSC}.sysctls[0].name",
                      {"allowedSysctls": ["kernel.msgmax"]}),
    "proc-mount-unmasked": ({CSC: {"procMount": "Unmasked"}}, f"{CSC}.procMount", {"allowUnmaskedProcMount": True}),
    "apparmor-unconfined": ({CSC: {"appArmorProfile": {"type": "Unconfined"}}}, f"{CSC}.appArmorProfile.type",
                            {"allowUnconfinedAppArmor": True}),
    "apparmor-pod-unconfined": ({PSC: {"appArmorProfile": {"type": "Unconfined"}}}, f"{PSC}.appArmorProfile.type",
                                {"allowUnconfinedAppArmor": True}),
    "apparmor-annotation": ({"annotations": {"container.apparmor.security.beta.kubernetes.io/pytorch": "unconfined"}},
                            "annotations[container.apparmor.security.beta.kubernetes.io/pytorch]",
                            {"allowUnconfinedAppArmor": True}),
    "selinux-spc": ({CSC: {"seLinuxOptions": {"type": "spc_t"}}}, f"{CSC}.seLinuxOptions.type",
                    {"allowedSELinuxTypes": ["spc_t"]}),
    "selinux-user": ({PSC: {"seLinuxOptions": {"user": "system_u"}}}, f"{PSC}.seLinuxOptions.user", None),
    "windows-host-process": ({CSC: {"windowsOptions": {"hostProcess": True}}}, f"{CSC}.windowsOptions.hostProcess",
                             None),
    "service-account": ({"serviceAccountName": "admin"}, "serviceAccountName", {"serviceAccounts": ["admin"]}),
    "operator-service-account": ({"serviceAccountName": "eve-operator"}, "serviceAccountName", None),
    "secret-env": ({"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}]},
                   "env[0].valueFrom.secretKeyRef.name", {"secrets": ["db"]}),
    "secret-env-from": ({"envFrom": [{"secretRef": {"name": "db"}}]}, "envFrom[0].secretRef.name", {"secrets": ["*"]}),
    "secret-volume": ({"volumes": [{"name": "s", "secret": {"secretName": "db"}}]}, "volumes[0].secret.secretName",
                      {"secrets": ["db"]}),
    "projected-secret": ({"volumes": [{"name": "p", "projected": {"sources": [{"secret": {"name": "db"}}]}}]},
                         "volumes[0].projected.sources[0].secret.name", {"secrets": ["db"]}),
}
#: What `baseline` allows and `restricted` does not.
BASELINE_ALLOWS = {"cap-drop-nothing", "run-as-non-root-false", "privilege-escalation", "nfs-volume", "root-user",
                   "container-root"}
#: Fields a podTemplate cannot carry at all: the spec refuses them (host namespaces, hostPort).
NOT_IN_THE_SPEC = {"hostNetwork": True, "hostPID": True, "hostIPC": True,
                   "containers": [{"name": "x", "ports": [{"containerPort": 1, "hostPort": 1}]}]}
#: The operator's own ServiceAccount, in the pipelines' namespace (the all-namespaces install's risk).
OPERATOR_SA = f"{NS}/eve-operator"
POLICY = PodPolicy(operator_service_account=OPERATOR_SA)


def spec_with(pod_template: dict[str, Any], *, stage: bool = False, **extra: Any) -> PipelineSpec:
    where = {"stages": {"prealign": {"podTemplate": pod_template}}} if stage else {"podTemplate": pod_template}
    return PipelineSpec.model_validate({**BASE, **where, **extra})


def rendered(spec: PipelineSpec, api: str = "PyTorchJob") -> dict[str, Any]:
    job = build_job_spec("demo", spec, SubmitJob("prealign", 1, job_name("demo", "prealign", 1), None, None))
    if api == "TrainJob":
        return build_trainjob(job, namespace=NS)
    return build_pytorchjob(job, namespace=NS)


@pytest.mark.parametrize("case", sorted(ESCALATIONS))
@pytest.mark.parametrize("stage", [False, True], ids=["pipeline", "stage"])
def test_each_escalation_is_refused_naming_the_field(case: str, stage: bool) -> None:
    template, field, _ = ESCALATIONS[case]
    spec = spec_with(template, stage=stage)
    prefix = "spec.stages.prealign.podTemplate" if stage else "spec.podTemplate"
    violations = check_pipeline(spec, POLICY, namespace=NS)
    assert [v.path for v in violations][:1] == [f"{prefix}.{field}"], violations
    message = pod_policy.refusal(violations, POLICY)
    assert f"{prefix}.{field}" in message and "pod policy (restricted" in message
    # the same pipeline through admission: refused, a user's fault ("invalid spec", exit 2)
    refused = admission.refuse(OperatorDefaults(pod_policy=POLICY), spec, NS)
    assert refused is not None and refused.reason == "PodPolicyViolation"
    assert refused.message.startswith("invalid spec: ") and f"{prefix}.{field}" in refused.message


@pytest.mark.parametrize("case", sorted(ESCALATIONS))
def test_the_rendered_jobs_are_refused_too(case: str) -> None:
    """The second check, on what the operator built: each escalation survives the merge into the pod,
    and the job check names its path in the PyTorchJob (and in the TrainJob where one can carry it)."""
    spec = spec_with(ESCALATIONS[case][0])
    body = rendered(spec)
    violations = check_job(body, POLICY, namespace=NS)
    assert violations and all(v.path.startswith("spec.pytorchReplicaSpecs.Master.template.") for v in violations)
    with pytest.raises(admission.PolicyError, match="PyTorchJob demo-prealign"):
        admission.check_job(OperatorDefaults(pod_policy=POLICY), body, NS)
    try:
        trainjob = rendered(spec, "TrainJob")
    except ConfigError:
        return  # a TrainJob cannot carry it at all (refused with the reason)
    assert check_job(trainjob, POLICY, namespace=NS), f"{case}: the TrainJob's pod got through"


@pytest.mark.parametrize("case", sorted(k for k, v in ESCALATIONS.items() if v[2] is not None))
def test_each_relaxation_lets_exactly_its_case_through(case: str) -> None:
    template, _, relaxation = ESCALATIONS[case]
    assert relaxation is not None
    policy = PodPolicy.from_mapping(relaxation, source="test")
    spec = spec_with(template)
    assert check_pipeline(spec, policy, namespace=NS) == []
    assert check_job(rendered(spec), policy, namespace=NS) == []
    others = [k for k, v in ESCALATIONS.items() if v[2] != relaxation and k != case
              and not (case.startswith("seccomp") and k.startswith("seccomp"))
              and not ("secrets" in relaxation and "secret" in k)]
    for other in others:  # one relaxation opens nothing else (baseline opens its own set only)
        if relaxation.get("profile") == "baseline" and other in BASELINE_ALLOWS:
            continue
        assert check_pipeline(spec_with(ESCALATIONS[other][0]), policy, namespace=NS), (case, other)


@pytest.mark.parametrize("case", sorted(set(ESCALATIONS) - {"service-account", "operator-service-account",
                                                          "secret-env", "secret-env-from", "secret-volume",
                                                          "projected-secret"}))
def test_the_policy_and_the_independent_pss_checker_agree(case: str) -> None:
    """Two hand-written readings of PSS (the operator's and the tests') judge every rendered pod alike."""
    body = rendered(spec_with(ESCALATIONS[case][0]))
    ((_, pod, annotations),) = [p for p in pod_policy.pod_specs(body)]
    assert bool(restricted_violations(pod, annotations)) == bool(check_job(body, POLICY, namespace=NS)) is True
    in_baseline = case not in BASELINE_ALLOWS
    assert bool(baseline_violations(pod, annotations)) is in_baseline
    assert bool(check_job(body, PodPolicy(profile="baseline"), namespace=NS)) is in_baseline


def test_the_operators_own_account_is_refused_even_when_listed() -> None:
    policy = dataclasses.replace(PodPolicy.from_mapping({"serviceAccounts": ["*"]}, source="t"),
                                 operator_service_account=OPERATOR_SA)
    (v,) = check_pipeline(spec_with({"serviceAccountName": "eve-operator"}), policy, namespace=NS)
    assert "is the operator's own" in v.problem and "no chart value allows it" in v.problem
    assert check_pipeline(spec_with({"serviceAccountName": "eve-operator"}), policy, namespace="team-b") == []


@pytest.mark.parametrize("field", sorted(NOT_IN_THE_SPEC))
def test_host_namespaces_and_ports_are_not_podtemplate_fields(field: str) -> None:
    with pytest.raises(ValidationError) as err:
        spec_with({field: NOT_IN_THE_SPEC[field]})
    assert f"podTemplate.{field}" in str(err.value).replace("\n", ".")


def test_default_pods_pass_the_policy_and_both_pss_profiles() -> None:
    for api in ("PyTorchJob", "TrainJob"):
        body = rendered(spec_with({}), api)
        assert check_job(body, POLICY, namespace=NS) == []
        for _, pod, _ in pod_policy.pod_specs(body):
            if api == "PyTorchJob":  # a TrainJob patch is completed by the runtime (tests/deploy checks both)
                assert restricted_violations(pod) == [] and baseline_violations(pod) == []
                assert pod["automountServiceAccountToken"] is False
            else:  # a runtimePatch cannot carry it: the chart's runtime sets false
                assert "automountServiceAccountToken" not in pod


def test_the_token_is_mounted_only_when_asked_and_never_through_a_trainjob() -> None:
    asked = spec_with({"automountServiceAccountToken": True})
    assert rendered(asked)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "automountServiceAccountToken"] is True
    with pytest.raises(ConfigError, match="automountServiceAccountToken"):
        rendered(asked, "TrainJob")


def test_a_bad_policy_fails_the_operator_at_start_with_the_key() -> None:
    with pytest.raises(ValueError, match="unknown key 'allowEverything'"):
        OperatorDefaults.from_env({"EVE_POD_POLICY": json.dumps({"allowEverything": True})})
    with pytest.raises(ValueError, match="profile='privileged'"):
        OperatorDefaults.from_env({"EVE_POD_POLICY": json.dumps({"profile": "privileged"})})


# -- scheduling cannot be bypassed -------------------------------------------------------------

REQUIRED = OperatorDefaults.from_env({"EVE_GANG_SCHEDULER": "kueue", "EVE_QUEUE": "team-a",
                                      "EVE_REQUIRE_GANG_SCHEDULER": "true"})


@pytest.mark.parametrize("gang", ["none", "volcano", "scheduler-plugins"])
def test_a_required_gang_scheduler_cannot_be_opted_out_of(gang: str) -> None:
    spec = REQUIRED.parse({**BASE, "scheduling": {"gangScheduler": gang}})
    refused = admission.refuse(REQUIRED, spec, NS)
    assert refused is not None and refused.reason == "SchedulingRequired"
    assert f"spec.scheduling.gangScheduler={gang}" in refused.message and "requires every pipeline to use kueue" \
        in refused.message
    assert admission.refuse(REQUIRED, REQUIRED.parse(BASE), NS) is None  # the cluster's own: admitted
    assert admission.refuse(dataclasses.replace(REQUIRED, require_gang_scheduler=False), spec, NS) is None


@pytest.mark.parametrize(("gang", "runtime_gang", "ok"), [
    ("volcano", "volcano", True), ("kueue", "none", True), ("none", "kueue", True),
    ("none", "volcano", False), ("volcano", "scheduler-plugins", False), ("kueue", "volcano", False)])
def test_a_trainjob_honours_the_gang_scheduler_or_is_refused(gang: str, runtime_gang: str, ok: bool) -> None:
    spec = spec_with({}, scheduling={"gangScheduler": gang, "queue": "q"})
    job = build_job_spec("demo", spec, SubmitJob("prealign", 1, job_name("demo", "prealign", 1), None, None))
    if ok:
        build_trainjob(job, namespace=NS, runtime_gang=runtime_gang)
        return
    with pytest.raises(ConfigError, match=f"gangScheduler={gang}.*schedules its pods with {runtime_gang}"):
        build_trainjob(job, namespace=NS, runtime_gang=runtime_gang)


# -- the operator's S3 identity -----------------------------------------------------------------


class Listener:
    """A real HTTP server on loopback that records the Authorization header of every request."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                seen.append(self.headers.get("Authorization") or "")
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_PUT = do_POST = do_GET  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def signed_with(self, key_id: str) -> list[str]:
        return [a for a in self.seen if f"Credential={key_id}/" in a]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    try:
        yield server
    finally:
        server.close()


OWN = {"EVE_S3_ENDPOINT": "http://minio.platform:9000", "EVE_S3_ALLOWED_BUCKETS": "eve-platform",
       "AWS_ACCESS_KEY_ID": "OPERATORKEY", "AWS_SECRET_ACCESS_KEY": "operator-secret"}


def test_the_operators_keys_go_only_to_listed_endpoints_and_buckets(listener: Listener,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from eve_operator import defaults as defaults_module
    from eve_operator.kube import open_store

    for key, value in OWN.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(defaults_module, "_LOADED", None)
    own = defaults_module.operator_defaults(reload=True)
    evil = own.parse({"output": "s3://eve-platform/eve", "s3": {"endpointUrl": listener.url}})
    refused = admission.refuse(own, evil, NS)
    assert refused is not None and refused.reason == "CredentialsRefused"
    assert f"spec.s3.endpointUrl='{listener.url}'" in refused.message and "http://minio.platform:9000" in \
        refused.message
    with pytest.raises(PermissionError):  # and the store access itself refuses, before any request
        open_store(evil, None).get_bytes("eve/demo/prealign/export/stage-complete.json")
    other_bucket = own.parse({"output": "s3://operator-only/eve"})
    assert admission.refuse(own, other_bucket, NS).reason == "CredentialsRefused"
    assert "spec.output='s3://operator-only/eve'" in admission.refuse(own, other_bucket, NS).message
    # the pipeline's own keys (readPipelineSecrets) may go to its endpoint: they are the pipeline's
    with_secret = dataclasses.replace(own, read_pipeline_secrets=True)
    spec = with_secret.parse({"output": "s3://bkt/eve", "s3": {"endpointUrl": listener.url, "credentialsSecret": "s"}})
    assert admission.refuse(with_secret, spec, NS) is None
    with pytest.raises(Exception):  # noqa: B017 - the listener answers 404
        open_store(spec, {"AWS_ACCESS_KEY_ID": "PIPELINEKEY", "AWS_SECRET_ACCESS_KEY": "x"}).get_bytes("k")
    assert listener.signed_with("PIPELINEKEY"), "the control request did not reach the listener"
    assert listener.signed_with("OPERATORKEY") == [], "the operator's key reached the pipeline's endpoint"
    # control: were the listener listed, the operator's key would reach it (so the check above can fail)
    monkeypatch.setenv("EVE_S3_ALLOWED_ENDPOINTS", listener.url)
    listed = defaults_module.operator_defaults(reload=True)
    spec = listed.parse({"output": "s3://eve-platform/eve", "s3": {"endpointUrl": listener.url}})
    with pytest.raises(Exception):  # noqa: B017
        open_store(spec, None).get_bytes("k")
    assert listener.signed_with("OPERATORKEY")
    monkeypatch.setattr(defaults_module, "_LOADED", None)


def test_the_operators_mlflow_login_goes_only_to_its_own_server(listener: Listener,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from eve_operator import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "operator")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "operator-password")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.eve-system.svc:5000")
    with pytest.raises(tracking.TrackingError):  # a pipeline's trackingUri: answered 404, sent no login
        tracking._call(listener.url, "GET", "experiments/get-by-name", query={"experiment_name": "x"})
    assert listener.seen == [""]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", listener.url)  # control: the operator's own server gets it
    with pytest.raises(tracking.TrackingError):
        tracking._call(listener.url, "GET", "experiments/get-by-name", query={"experiment_name": "x"})
    assert listener.seen[-1].startswith("Basic ")


# -- through the real operator and `submit --dry-run` --------------------------------------------

#: A handful through the real operator (admission is pure; the table above covers the rest).
THROUGH_THE_OPERATOR = ["privileged", "host-path-root", "operator-service-account", "seccomp-unconfined-pod"]


def test_the_operator_refuses_with_status_condition_and_event(cluster: Cluster, listener: Listener, s3_env: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"EVE_OPERATOR_NAMESPACE": NS, "EVE_OPERATOR_SERVICE_ACCOUNT": "eve-operator",
                       "EVE_GANG_SCHEDULER": "volcano", "EVE_REQUIRE_GANG_SCHEDULER": "true"}.items():
        monkeypatch.setenv(key, value)
    base = {"preset": "tiny", "output": "s3://eve-platform/eve", "maxAttempts": 1,
            "resources": {"gpusPerNode": 0, "cpu": "1", "memory": "1Gi", "shmSize": "1Gi"}}
    cases = {f"p-{case}": ({**base, "podTemplate": ESCALATIONS[case][0]}, ESCALATIONS[case][1], "PodPolicyViolation")
             for case in THROUGH_THE_OPERATOR}
    cases["p-stage"] = ({**base, "stages": {"sft": {"podTemplate": ESCALATIONS["cap-sys-admin"][0]}}},
                        "spec.stages.sft.podTemplate.containerSecurityContext.capabilities.add[0]", "PodPolicyViolation")
    cases["p-no-gang"] = ({**base, "scheduling": {"gangScheduler": "none"}}, "spec.scheduling.gangScheduler=none",
                          "SchedulingRequired")
    cases["p-listener"] = ({**base, "s3": {"endpointUrl": listener.url}}, "spec.s3.endpointUrl", "CredentialsRefused")
    with running_operator():
        for name, (spec, _, _) in cases.items():
            cluster.create_pipeline(name.replace("_", "-")[:40], spec)
        for name, (_, field, reason) in cases.items():
            status = wait_for(lambda n=name: cluster.status(n) if cluster.status(n).get("phase") == "Failed" else None,
                              timeout=60, what=f"{name} refused")
            assert field in status["message"] and status["message"].startswith("invalid spec: "), status
            (cond,) = status["conditions"]
            assert (cond["type"], cond["status"], cond["reason"]) == ("Admitted", "False", reason)
            assert field in cond["message"]
            events = wait_for(lambda n=name: [e for e in cluster.events(n) if e["reason"] == reason],
                              what=f"the {reason} event of {name}")
            assert events[0]["type"] == "Warning" and field in events[0]["message"]
        # more reconcile passes of every pipeline (counted by eve_operator_reconciles_total): a refusal
        # is reported once, not on every pass
        target = metrics.RECONCILES.total() + 3 * len(cases)
        wait_for(lambda: metrics.RECONCILES.total() >= target, what="three more passes of each pipeline")
        for name, (_, _, reason) in cases.items():
            assert len([e for e in cluster.events(name) if e["reason"] == reason]) == 1, name
        assert cluster.jobs() == {}, "a refused pipeline created a job"
    assert listener.seen == [], "the operator sent a request to the pipeline's endpoint"


def test_a_job_the_operator_builds_is_checked_again(cluster: Cluster, operator: Any, output: str,
                                                   tmp_path: Path) -> None:
    """An escalation added to a later stage while the pipeline runs: the running stage is left alone,
    and the next stage's job is refused as it is built (nothing created), naming its field."""
    from operator_harness import base_spec, write_export

    cluster.create_pipeline("later", base_spec(output))
    wait_for(lambda: cluster.jobs().get("later-prealign"), what="the prealign job")
    cluster.patch_spec("later", {"stages": {"pretrain": {"podTemplate": ESCALATIONS["host-path-root"][0]}}})
    cluster.set_condition("later-prealign", "Running")
    write_export(output, "later", "prealign", tmp_path)
    cluster.set_condition("later-prealign", "Succeeded")
    status = wait_for(lambda: cluster.status("later") if cluster.status("later").get("phase") == "Failed" else None,
                      what="the pretrain job refused")
    assert "PyTorchJob later-pretrain" in status["message"]
    assert "spec.pytorchReplicaSpecs.Master.template.spec.volumes[1].hostPath" in status["message"]
    assert sorted(cluster.jobs()) == ["later-prealign"]
    assert wait_for(lambda: [e for e in cluster.events("later") if e["reason"] == "PodPolicyViolation"])


def test_dry_run_checks_the_clusters_rules(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every escalation through `eve-platform submit -f <EvePipeline> --dry-run`, against the chart's
    rules ConfigMap read through the kube context (and the built-in policy without it)."""
    from typer.testing import CliRunner

    from eve_operator.backends import kubernetes as kb
    from eve_operator.cli.main import app

    monkeypatch.setenv("EVE_PLATFORM_BACKEND", "kubernetes")

    def dry_run(pod_template: dict[str, Any] | None = None, *pairs: str) -> Any:
        spec = {**BASE, "start": "prealign", "output": "s3://eve-platform/eve", "podTemplate": pod_template or {}}
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "eve-platform.io/v1alpha1", "kind": "EvePipeline",
                                        "metadata": {"name": "demo", "namespace": NS}, "spec": spec}))
        result = CliRunner().invoke(app, ["submit", "-f", str(path), *pairs, "--dry-run", "-n", NS])
        assert "Traceback" not in result.output
        return result

    # no rules ConfigMap in the cluster: the built-in restricted policy, said so
    result = dry_run()
    assert result.exit_code == 0, result.output
    assert "built-in restricted pod policy" in result.output and "not readable" in result.output
    result = dry_run(ESCALATIONS["privileged"][0])
    assert result.exit_code == 2 and "spec.podTemplate.containerSecurityContext.privileged" in result.output
    cluster.core.create_namespaced_config_map(NS, {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "eve-platform-policy", "namespace": NS},
        "data": {"EVE_POD_POLICY": json.dumps({"allowedCapabilities": ["IPC_LOCK"]}),
                 "EVE_OPERATOR_SERVICE_ACCOUNT": "eve-operator", "EVE_GANG_SCHEDULER": "volcano",
                 "EVE_REQUIRE_GANG_SCHEDULER": "true", "EVE_S3_ENDPOINT": "http://minio:9000",
                 "EVE_S3_ALLOWED_BUCKETS": "eve-platform"}})
    monkeypatch.setenv(kb.ENV_POLICY_CONFIGMAP, f"{NS}/eve-platform-policy")
    result = dry_run()
    assert result.exit_code == 0 and f"the cluster's rules (ConfigMap {NS}/eve-platform-policy)" in result.output
    for case, (template, field, _) in ESCALATIONS.items():
        result = dry_run(template)
        assert result.exit_code == 2 and f"spec.podTemplate.{field}" in result.output, (case, result.output)
    result = dry_run({CSC: {"capabilities": {"add": ["IPC_LOCK"]}}})  # the cluster's relaxation
    assert result.exit_code == 0, result.output
    result = dry_run(None, "gang_scheduler=none")
    assert result.exit_code == 2 and "spec.scheduling.gangScheduler=none" in result.output, result.output
    result = dry_run(None, "endpoint_url=http://127.0.0.1:9")
    assert result.exit_code == 2 and "spec.s3.endpointUrl" in result.output, result.output
