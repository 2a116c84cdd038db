"""The Pod Security Standards `baseline` and `restricted` profiles as a checker of the tests.

Hand-written because no maintained Python library evaluates PSS; it follows
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (v1.35) field by field,
independently of the operator's own eve_operator.pod_policy (so each checks the other), and
returns every violation (empty: the pod would be admitted by `enforce: <profile>`).

baseline: host namespaces, privileged, capabilities beyond the baseline set, hostPath volumes,
hostPorts, AppArmor (field and annotation), SELinux type/user/role, /proc mount type, seccomp
Unconfined, unsafe sysctls, Windows hostProcess.
restricted (adds): volume types, allowPrivilegeEscalation=false, runAsNonRoot=true, runAsUser!=0,
seccomp RuntimeDefault/Localhost, capabilities drop ALL and add only NET_BIND_SERVICE.
"""

from __future__ import annotations

from typing import Any

_BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                  "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                 "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                 "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                 "net.ipv4.tcp_keepalive_probes"}
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def baseline_violations(pod: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """Violations of `baseline` by a PodSpec (and its pod's annotations)."""
    return _violations(pod, annotations or {}, restricted=False)


def restricted_violations(pod: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """Violations of `restricted` (which includes `baseline`) by a PodSpec."""
    return _violations(pod, annotations or {}, restricted=True)


def _security_context(sc: dict[str, Any], who: str) -> list[str]:
    out = []
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append(f"{who}: windowsOptions.hostProcess=true")
    if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"{who}: appArmorProfile {sc['appArmorProfile']['type']}")
    se = sc.get("seLinuxOptions") or {}
    if se.get("type", "") not in _SELINUX_TYPES:
        out.append(f"{who}: seLinuxOptions.type {se['type']}")
    for key in ("user", "role"):
        if se.get(key):
            out.append(f"{who}: seLinuxOptions.{key} is set")
    return out


def _violations(pod: dict[str, Any], annotations: dict[str, str], *, restricted: bool) -> list[str]:
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    containers = [*pod.get("containers", []), *pod.get("initContainers", []), *pod.get("ephemeralContainers", [])]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"{key}=true")
    for vol in pod.get("volumes", []):
        kinds = set(vol) - {"name"}
        if "hostPath" in kinds:
            out.append(f"volume {vol['name']} is a hostPath")
        if restricted and kinds - _RESTRICTED_VOLUMES:
            out.append(f"volume {vol['name']} has a restricted type ({', '.join(sorted(kinds - _RESTRICTED_VOLUMES))})")
    for sysctl in psc.get("sysctls", []):
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')} is unsafe")
    if restricted and psc.get("runAsUser") == 0:
        out.append("pod runAsUser=0")
    if restricted and psc.get("runAsNonRoot") is False:  # even when every container sets true
        out.append("pod runAsNonRoot=false")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        out.append("pod seccompProfile Unconfined")
    out += _security_context(psc, "pod")
    for key, value in annotations.items():
        if key.startswith(_APPARMOR_ANNOTATION) and value not in ("runtime/default",) and not value.startswith(
                "localhost/"):
            out.append(f"annotation {key}={value}")
    for c in containers:
        name, sc = c.get("name"), c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"container {name}: privileged")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"container {name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"container {name}: procMount {sc['procMount']}")
        caps = sc.get("capabilities") or {}
        if set(caps.get("add", [])) - _BASELINE_CAPS:
            out.append(f"container {name}: adds capabilities beyond baseline")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined" and not restricted:
            out.append(f"container {name}: seccompProfile Unconfined")
        out += _security_context(sc, f"container {name}")
        if not restricted:
            continue
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"container {name}: adds {', '.join(sorted(set(caps['add']) - {'NET_BIND_SERVICE'}))}")
        if "ALL" not in caps.get("drop", []):
            out.append(f"container {name}: does not drop ALL capabilities")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"container {name}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"container {name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            out.append(f"container {name}: runAsUser=0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"container {name}: seccompProfile is {seccomp or 'unset'}")
    return out
