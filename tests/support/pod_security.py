"""The Pod Security Standards `restricted` profile (which includes `baseline`) as a checker.

Hand-written because no maintained Python library evaluates PSS; it follows
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (v1.35) field by field,
and returns every violation (empty: the pod would be admitted by `enforce: restricted`).
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


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Violations of `restricted` by a PodSpec."""
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
        if kinds - _RESTRICTED_VOLUMES:
            out.append(f"volume {vol['name']} has a restricted type ({', '.join(sorted(kinds - _RESTRICTED_VOLUMES))})")
    for sysctl in psc.get("sysctls", []):
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')} is unsafe")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser=0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        out.append("pod seccompProfile Unconfined")
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
