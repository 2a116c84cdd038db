"""The platform team's pod policy: what a pipeline's pods may be, checked before anything runs.

Pure (no I/O). The default is the Pod Security Standards `restricted` profile (v1.35,
https://kubernetes.io/docs/concepts/security/pod-security-standards/), plus two rules PSS
does not have: a pod runs only as a ServiceAccount the chart lists (never the operator's
own), and it references only the Secrets the chart lists. Each relaxation is one explicit
field of the policy (chart values `podPolicy.*`, docs/install.md#security-model):

    policy field                 relaxes                                  chart value
    profile: baseline            the restricted-only rules (volume types,  podPolicy.profile
                                 runAsNonRoot, allowPrivilegeEscalation,
                                 seccomp required, capabilities drop ALL)
    allowPrivileged              containers[].securityContext.privileged   podPolicy.allowPrivileged
    allowPrivilegeEscalation     ...securityContext.allowPrivilegeEscalation podPolicy.allowPrivilegeEscalation
    allowRunAsRoot               runAsNonRoot=false, runAsUser=0           podPolicy.allowRunAsRoot
    allowedCapabilities          capabilities.add beyond NET_BIND_SERVICE  podPolicy.allowedCapabilities
    allowedHostPaths             hostPath volumes under these paths        podPolicy.allowedHostPaths
    allowedVolumeTypes           volume types beyond the restricted set    podPolicy.allowedVolumeTypes
    allowedSysctls               sysctls beyond the safe set               podPolicy.allowedSysctls
    allowUnconfinedSeccomp       seccompProfile.type Unconfined            podPolicy.allowUnconfinedSeccomp
    allowUnmaskedProcMount       procMount Unmasked                        podPolicy.allowUnmaskedProcMount
    allowUnconfinedAppArmor      appArmorProfile Unconfined                podPolicy.allowUnconfinedAppArmor
    allowedSELinuxTypes          seLinuxOptions.type beyond container_t... podPolicy.allowedSELinuxTypes
    serviceAccounts              serviceAccountName values                 podPolicy.serviceAccounts
    secrets                      Secret env / envFrom / volumes            podPolicy.secrets

Never relaxable: host namespaces (hostNetwork/hostPID/hostIPC), hostPort, Windows
hostProcess, seLinuxOptions user/role, and the operator's own ServiceAccount.

Two checks share one rule set:
- `check_template`: a pipeline's `podTemplate` (and each stage's), naming the spec field
  (`spec.stages.sft.podTemplate.containerSecurityContext.privileged`). Only what the
  template sets counts: whatever it leaves out keeps the operator's restricted default.
- `check_pod`: a rendered PodSpec (the job the operator is about to create), every rule,
  naming the path in the pod (`...template.spec.containers[0].securityContext.privileged`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

PROFILES = ("restricted", "baseline")
#: Capabilities `baseline` allows to add (PSS "Capabilities").
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
    "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
#: PSS "Sysctls": the safe set.
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes"})
#: PSS restricted "Volume Types".
RESTRICTED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"})
#: PSS baseline "SELinux": allowed types (and "" / unset).
SELINUX_TYPES = frozenset({"container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


@dataclass(frozen=True)
class Violation:
    path: str
    """The field, as a path in the object checked (spec.podTemplate.volumes[0].hostPath)."""
    problem: str
    """What is wrong and what relaxes it."""

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class PodPolicy:
    """What a pipeline's pods may be. Field names are the chart's `podPolicy` keys in snake_case."""

    profile: str = "restricted"
    allow_privileged: bool = False
    allow_privilege_escalation: bool = False
    allow_run_as_root: bool = False
    allowed_capabilities: tuple[str, ...] = ()
    allowed_host_paths: tuple[str, ...] = ()
    allowed_volume_types: tuple[str, ...] = ()
    allowed_sysctls: tuple[str, ...] = ()
    allow_unconfined_seccomp: bool = False
    allow_unmasked_proc_mount: bool = False
    allow_unconfined_app_armor: bool = False
    allowed_selinux_types: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    """ServiceAccounts a podTemplate may name (in the pipeline's namespace); "*": any but the operator's."""
    secrets: tuple[str, ...] = ()
    """Secrets a podTemplate may reference in env, envFrom and volumes; "*": any."""
    operator_service_account: str = ""
    """`<namespace>/<name>` of the operator's own ServiceAccount: never a pod's."""
    source: str = "built-in restricted"
    """Where this policy came from (said in messages and by `--dry-run`)."""

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, source: str) -> PodPolicy:
        """From the chart's `podPolicy` values (camelCase); raises ValueError naming a bad key."""
        by_key = {_camel(f.name): f for f in fields(cls) if f.name not in ("source",)}
        by_key["allowedSELinuxTypes"] = by_key.pop("allowedSelinuxTypes")
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            f = by_key.get(key)
            if f is None:
                raise ValueError(f"pod policy ({source}): unknown key {key!r} (allowed: {', '.join(sorted(by_key))})")
            if f.type in ("bool",):
                if not isinstance(value, bool):
                    raise ValueError(f"pod policy ({source}): {key}={value!r} must be true or false")
            elif f.type.startswith("tuple"):
                if value is None:
                    value = ()
                if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"pod policy ({source}): {key}={value!r} must be a list of strings")
                value = tuple(value)
            elif not isinstance(value, str):
                raise ValueError(f"pod policy ({source}): {key}={value!r} must be a string")
            kwargs[f.name] = value
        policy = cls(**kwargs, source=source)
        if policy.profile not in PROFILES:
            raise ValueError(f"pod policy ({source}): profile={policy.profile!r} is not one of {', '.join(PROFILES)}")
        return policy

    @classmethod
    def from_json(cls, text: str, *, source: str) -> PodPolicy:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"pod policy ({source}) is not JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"pod policy ({source}) must be a JSON object")
        return cls.from_mapping(raw, source=source)

    @property
    def restricted(self) -> bool:
        return self.profile == "restricted"

    def describe(self) -> str:
        relaxed = [f"{_camel(f.name)}={getattr(self, f.name)!r}" for f in fields(self)
                   if f.name not in ("profile", "source", "operator_service_account")
                   and getattr(self, f.name) != f.default]
        return f"{self.profile} ({self.source})" + (f", relaxed: {', '.join(relaxed)}" if relaxed else "")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


RESTRICTED = PodPolicy()


# -- where a field is: a rendered pod, or a pipeline's podTemplate ------------------------------


class _PodPaths:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def pod(self, rest: str) -> str:
        return f"{self.prefix}.{rest}"

    def container(self, kind: str, i: int, rest: str) -> str:
        return f"{self.prefix}.{kind}[{i}].{rest}"

    def annotations(self, key: str) -> str:
        head = self.prefix.rsplit(".spec", 1)[0] + "." if "." in self.prefix else ""
        return f"{head}metadata.annotations[{key}]"


class _TemplatePaths(_PodPaths):
    _CONTAINER = {"securityContext": "containerSecurityContext", "env": "env", "envFrom": "envFrom",
                  "volumeMounts": "volumeMounts", "ports": "ports"}

    def container(self, kind: str, i: int, rest: str) -> str:
        head, _, tail = rest.partition(".")
        key, bracket, index = head.partition("[")
        name = self._CONTAINER.get(key, key) + (bracket + index if bracket else "")
        return f"{self.prefix}.{name}" + (f".{tail}" if tail else "")

    def annotations(self, key: str) -> str:
        return f"{self.prefix}.annotations[{key}]"


# -- the rules ----------------------------------------------------------------------------------


@dataclass
class _Check:
    policy: PodPolicy
    paths: _PodPaths
    full: bool
    """Every rule (a rendered pod); else only what is set (a podTemplate, merged over defaults)."""
    namespace: str | None = None
    own_secrets: tuple[str, ...] = ()
    """Secrets the operator itself references (the pipeline's spec.s3.credentialsSecret): allowed."""
    out: list[Violation] = field(default_factory=list)

    def bad(self, path: str, problem: str, relax: str | None) -> None:
        hint = (f"; chart value podPolicy.{relax} relaxes it (docs/install.md#security-model)" if relax
                else "; no chart value allows it")
        self.out.append(Violation(path, f"{problem}, which the pod policy ({self.policy.profile}) forbids{hint}"))

    def pod(self, spec: Mapping[str, Any], annotations: Mapping[str, str]) -> None:
        p, policy = self.paths, self.policy
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                self.bad(p.pod(key), f"{key}=true shares the node's namespace", None)
        psc = spec.get("securityContext") or {}
        self.security_context(psc, lambda rest: p.pod(f"securityContext.{rest}"), pod_level=True)
        for i, sysctl in enumerate(psc.get("sysctls") or []):
            name = (sysctl or {}).get("name")
            if name not in SAFE_SYSCTLS and name not in policy.allowed_sysctls:
                self.bad(p.pod(f"securityContext.sysctls[{i}].name"), f"sysctl {name!r} is not in the safe set",
                         "allowedSysctls")
        for i, vol in enumerate(spec.get("volumes") or []):
            self.volume(i, vol)
        self.service_account(spec)
        for key, value in annotations.items():
            if key.startswith(APPARMOR_ANNOTATION) and value == "unconfined" and not policy.allow_unconfined_app_armor:
                self.bad(p.annotations(key), "AppArmor profile unconfined", "allowUnconfinedAppArmor")
        pod_root_ok = psc.get("runAsNonRoot") is True
        pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
        for kind in ("containers", "initContainers", "ephemeralContainers"):
            for i, c in enumerate(spec.get(kind) or []):
                self.container(kind, i, c, pod_root_ok, pod_seccomp)

    def security_context(self, sc: Mapping[str, Any], at: Any, *, pod_level: bool) -> None:
        policy = self.policy
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            self.bad(at("windowsOptions.hostProcess"), "hostProcess=true runs a Windows container on the host", None)
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None:
            if seccomp == "Unconfined" and not policy.allow_unconfined_seccomp:
                self.bad(at("seccompProfile.type"), "seccompProfile Unconfined turns off syscall filtering",
                         "allowUnconfinedSeccomp")
            elif seccomp not in SECCOMP_TYPES and seccomp != "Unconfined" and policy.restricted:
                self.bad(at("seccompProfile.type"), f"seccompProfile {seccomp!r} is not RuntimeDefault or Localhost",
                         "profile (baseline)")
        app_armor = (sc.get("appArmorProfile") or {}).get("type")
        if app_armor == "Unconfined" and not policy.allow_unconfined_app_armor:
            self.bad(at("appArmorProfile.type"), "appArmorProfile Unconfined", "allowUnconfinedAppArmor")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type") and se["type"] not in SELINUX_TYPES and se["type"] not in policy.allowed_selinux_types:
            self.bad(at("seLinuxOptions.type"), f"seLinuxOptions.type {se['type']!r} is not one of "
                     f"{', '.join(sorted(SELINUX_TYPES))}", "allowedSELinuxTypes")
        for key in ("user", "role"):
            if se.get(key):
                self.bad(at(f"seLinuxOptions.{key}"), f"seLinuxOptions.{key} is set", None)
        if sc.get("runAsUser") == 0 and policy.restricted and not policy.allow_run_as_root:
            self.bad(at("runAsUser"), "runAsUser=0 runs as root", "allowRunAsRoot")
        if sc.get("runAsNonRoot") is False and policy.restricted and not policy.allow_run_as_root:
            self.bad(at("runAsNonRoot"), "runAsNonRoot=false lets the image run as root", "allowRunAsRoot")

    def volume(self, i: int, vol: Mapping[str, Any]) -> None:
        policy, at = self.policy, lambda rest: self.paths.pod(f"volumes[{i}].{rest}")
        kinds = sorted(set(vol) - {"name"})
        for kind in kinds:
            if kind == "hostPath":
                path = str((vol.get("hostPath") or {}).get("path") or "")
                if not any(_under(path, allowed) for allowed in policy.allowed_host_paths):
                    self.bad(at("hostPath"), f"hostPath volume {path!r} exposes the node's files", "allowedHostPaths")
            elif (policy.restricted and kind not in RESTRICTED_VOLUME_TYPES
                  and kind not in policy.allowed_volume_types):
                self.bad(at(kind), f"volume type {kind} is not one of {', '.join(sorted(RESTRICTED_VOLUME_TYPES))}",
                         "allowedVolumeTypes")
        if "secret" in vol:
            self.secret(at("secret.secretName"), (vol.get("secret") or {}).get("secretName"))
        for j, source in enumerate((vol.get("projected") or {}).get("sources") or []):
            if "secret" in (source or {}):
                self.secret(at(f"projected.sources[{j}].secret.name"), (source.get("secret") or {}).get("name"))

    def secret(self, path: str, name: Any) -> None:
        allowed = self.policy.secrets
        if "*" not in allowed and name not in allowed and name not in self.own_secrets:
            self.bad(path, f"Secret {name!r} is not one the chart lets pods read", "secrets")

    def service_account(self, spec: Mapping[str, Any]) -> None:
        name = spec.get("serviceAccountName") or spec.get("serviceAccount")
        if not name:
            return
        path = self.paths.pod("serviceAccountName")
        operator = self.policy.operator_service_account
        if operator and self.namespace and operator == f"{self.namespace}/{name}":
            self.bad(path, f"ServiceAccount {name!r} is the operator's own", None)
        elif "*" not in self.policy.service_accounts and name not in self.policy.service_accounts:
            self.bad(path, f"ServiceAccount {name!r} is not one the chart lists", "serviceAccounts")

    def container(self, kind: str, i: int, c: Mapping[str, Any], pod_root_ok: bool, pod_seccomp: str | None) -> None:
        policy, p = self.policy, self.paths

        def at(rest: str) -> str:
            return p.container(kind, i, rest)

        sc = c.get("securityContext") or {}
        self.security_context(sc, lambda rest: at(f"securityContext.{rest}"), pod_level=False)
        if sc.get("privileged") and not policy.allow_privileged:
            self.bad(at("securityContext.privileged"), "privileged=true gives the container the host's devices",
                     "allowPrivileged")
        if (sc.get("procMount") or "Default") != "Default" and not policy.allow_unmasked_proc_mount:
            self.bad(at("securityContext.procMount"), f"procMount {sc['procMount']}", "allowUnmaskedProcMount")
        for j, port in enumerate(c.get("ports") or []):
            if (port or {}).get("hostPort"):
                self.bad(at(f"ports[{j}].hostPort"), "hostPort binds a port of the node", None)
        caps = sc.get("capabilities") or {}
        allowed_caps = (RESTRICTED_CAPABILITIES if policy.restricted else BASELINE_CAPABILITIES) \
            | set(policy.allowed_capabilities)
        for j, cap in enumerate(caps.get("add") or []):
            if cap not in allowed_caps:
                self.bad(at(f"securityContext.capabilities.add[{j}]"), f"capability {cap} is added",
                         "allowedCapabilities")
        if policy.restricted:
            if ("drop" in caps or self.full) and "ALL" not in (caps.get("drop") or []):
                self.bad(at("securityContext.capabilities.drop"), "capabilities.drop does not include ALL",
                         "profile (baseline)")
            escalation = sc.get("allowPrivilegeEscalation")
            if not policy.allow_privilege_escalation and (escalation is True or (self.full and escalation is not False)):
                self.bad(at("securityContext.allowPrivilegeEscalation"), "allowPrivilegeEscalation is not false",
                         "allowPrivilegeEscalation")
            if self.full and not policy.allow_run_as_root and sc.get("runAsNonRoot", pod_root_ok) is not True:
                self.bad(at("securityContext.runAsNonRoot"), "runAsNonRoot is not true (pod or container)",
                         "allowRunAsRoot")
            seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
            if self.full and seccomp is None:
                self.bad(at("securityContext.seccompProfile.type"), "no seccompProfile (pod or container)",
                         "profile (baseline)")
        for j, env in enumerate(c.get("env") or []):
            ref = ((env or {}).get("valueFrom") or {}).get("secretKeyRef")
            if ref is not None:
                self.secret(at(f"env[{j}].valueFrom.secretKeyRef.name"), ref.get("name"))
        for j, env_from in enumerate(c.get("envFrom") or []):
            if "secretRef" in (env_from or {}):
                self.secret(at(f"envFrom[{j}].secretRef.name"), (env_from.get("secretRef") or {}).get("name"))


def _under(path: str, allowed: str) -> bool:
    path, allowed = path.rstrip("/") or "/", allowed.rstrip("/") or "/"
    return path == allowed or (allowed == "/" or path.startswith(allowed + "/"))


# -- entry points -------------------------------------------------------------------------------


def check_pod(pod_spec: Mapping[str, Any], policy: PodPolicy = RESTRICTED, *, path: str = "spec",
              annotations: Mapping[str, str] | None = None, namespace: str | None = None,
              own_secrets: Iterable[str] = ()) -> list[Violation]:
    """Every rule of the policy on a rendered PodSpec; `path` is where the PodSpec sits.
    own_secrets: the Secrets the operator itself references (spec.s3.credentialsSecret)."""
    check = _Check(policy, _PodPaths(path), full=True, namespace=namespace, own_secrets=tuple(own_secrets))
    check.pod(pod_spec, annotations or {})
    return check.out


def check_template(template: Any, policy: PodPolicy = RESTRICTED, *, path: str = "spec.podTemplate",
                   namespace: str | None = None) -> list[Violation]:
    """What a podTemplate (eve_operator.spec.PodTemplateSpec or its dict) sets against the policy."""
    raw = template.model_dump(by_alias=True, exclude_defaults=True) if hasattr(template, "model_dump") \
        else dict(template or {})
    container = {k: raw[k] for k in ("env", "envFrom", "volumeMounts") if k in raw}
    if "containerSecurityContext" in raw:
        container["securityContext"] = raw["containerSecurityContext"]
    pod = {k: raw[k] for k in ("serviceAccountName", "volumes", "hostNetwork", "hostPID", "hostIPC") if k in raw}
    if "securityContext" in raw:
        pod["securityContext"] = raw["securityContext"]
    pod["containers"] = [container]
    check = _Check(policy, _TemplatePaths(path), full=False, namespace=namespace)
    check.pod(pod, raw.get("annotations") or {})
    return check.out


def check_pipeline(spec: Any, policy: PodPolicy = RESTRICTED, *, namespace: str | None = None) -> list[Violation]:
    """The pipeline's podTemplate and each stage's (eve_operator.spec.PipelineSpec)."""
    out = check_template(spec.pod_template, policy, namespace=namespace)
    for name, stage in spec.stages.items():
        if stage.pod_template is not None:
            out += check_template(stage.pod_template, policy, path=f"spec.stages.{name}.podTemplate",
                                  namespace=namespace)
    return out


def pod_specs(job: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any], Mapping[str, str]]]:
    """(path, PodSpec, pod annotations) of every pod template in a PyTorchJob or TrainJob body."""
    spec = job.get("spec") or {}
    for replica, rs in (spec.get("pytorchReplicaSpecs") or {}).items():
        tpl = (rs or {}).get("template") or {}
        yield (f"spec.pytorchReplicaSpecs.{replica}.template.spec", tpl.get("spec") or {},
               (tpl.get("metadata") or {}).get("annotations") or {})
    for k, patch in enumerate(spec.get("runtimePatches") or []):
        rt = ((patch or {}).get("trainingRuntimeSpec") or {}).get("template") or {}
        for j, rj in enumerate((rt.get("spec") or {}).get("replicatedJobs") or []):
            tpl = (((rj or {}).get("template") or {}).get("spec") or {}).get("template") or {}
            pod = dict(tpl.get("spec") or {})
            # the trainer container of a TrainJob is spec.trainer (env) + the patch (securityContext)
            trainer = spec.get("trainer") or {}
            containers = [dict(c) for c in pod.get("containers") or [{"name": "node"}]]
            containers[0].setdefault("env", trainer.get("env") or [])
            pod["containers"] = containers
            yield (f"spec.runtimePatches[{k}].trainingRuntimeSpec.template.spec.replicatedJobs[{j}].template.spec."
                   "template.spec", pod, (tpl.get("metadata") or {}).get("annotations") or {})


def check_job(job: Mapping[str, Any], policy: PodPolicy = RESTRICTED, *,
              namespace: str | None = None, own_secrets: Iterable[str] = ()) -> list[Violation]:
    """Every pod template of a rendered PyTorchJob or TrainJob, every rule.

    A TrainJob's pod is its runtimePatch (the whole merged securityContext, volumes, ...) with
    spec.trainer's env on the `node` container.
    """
    out: list[Violation] = []
    for path, pod, pod_annotations in pod_specs(job):
        out += check_pod(pod, policy, path=path, annotations=pod_annotations, namespace=namespace,
                         own_secrets=own_secrets)
    return out


def refusal(violations: list[Violation], policy: PodPolicy) -> str:
    """The one message a refused pipeline gets (status, Event, CLI)."""
    return (f"refused by the pod policy ({policy.describe()}): " + "; ".join(str(v) for v in violations))


__all__ = ["PodPolicy", "Violation", "RESTRICTED", "PROFILES", "check_pod", "check_template", "check_pipeline",
           "check_job", "pod_specs", "refusal", "SAFE_SYSCTLS", "RESTRICTED_VOLUME_TYPES", "SELINUX_TYPES",
           "BASELINE_CAPABILITIES"]
