"""The checkpoint layout and its manifests: the one place that defines them.

    <output>/<pipeline>/<stage>/checkpoints/step-<n>/   shard files + manifest.json (written last)
    <output>/<pipeline>/<stage>/export/                 HF-format model + stage-complete.json (written last)
    <output>/<pipeline>/<stage>/heartbeat/rank-<r>.json  each rank's liveness: step, time, attempt

A manifest lists every file with its size and sha256. A checkpoint or export counts only
when its manifest exists and every file verifies, so a half-written one is never picked.
torch-free: the operator reads these to decide when the next stage may start.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eve_contract.storage import ObjectStore, join

MANIFEST = "manifest.json"
STAGE_COMPLETE = "stage-complete.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_prefix(pipeline: str, stage: str) -> str:
    return join(pipeline, stage, "checkpoints")


def checkpoint_prefix(pipeline: str, stage: str, step: int) -> str:
    return join(pipeline, stage, "checkpoints", f"step-{step}")


def export_prefix(pipeline: str, stage: str) -> str:
    return join(pipeline, stage, "export")


def heartbeat_prefix(pipeline: str, stage: str) -> str:
    return join(pipeline, stage, "heartbeat")


def heartbeat_key(pipeline: str, stage: str, rank: int) -> str:
    return join(pipeline, stage, "heartbeat", f"rank-{rank}.json")


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass
class Manifest:
    kind: str  # "checkpoint" | "stage-complete"
    pipeline: str
    stage: str
    step: int
    files: list[FileEntry]
    config_hash: str = ""
    mlflow_run_id: str | None = None
    created_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> Manifest:
        data = json.loads(blob)
        data["files"] = [FileEntry(**f) for f in data["files"]]
        return cls(**data)


def entries_for_dir(root: str | Path) -> list[FileEntry]:
    root = Path(root)
    return [
        FileEntry(str(p.relative_to(root)), p.stat().st_size, sha256_file(p))
        for p in sorted(root.rglob("*")) if p.is_file()
    ]


def verify(store: ObjectStore, prefix: str, manifest_name: str, *, deep: bool = True) -> Manifest | None:
    """The manifest if present and every listed file matches it, else None.

    deep=True re-hashes every file (reads it all); deep=False checks sizes only.
    """
    try:
        manifest = Manifest.from_json(store.get_bytes(join(prefix, manifest_name)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError):
        return None
    for entry in manifest.files:
        key = join(prefix, entry.path)
        try:
            if store.size(key) != entry.size:
                return None
        except Exception:  # noqa: BLE001 - missing object of any backend
            return None
        if deep and _sha256_object(store, key) != entry.sha256:
            return None
    return manifest


def _sha256_object(store: ObjectStore, key: str) -> str:
    h = hashlib.sha256()
    with store.open_read(key) as stream:
        while block := stream.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def list_checkpoint_steps(store: ObjectStore, pipeline: str, stage: str) -> list[int]:
    """Steps that have a manifest (not yet verified), newest first."""
    prefix = checkpoints_prefix(pipeline, stage)
    steps = set()
    for key in store.list(prefix):
        rel = key[len(prefix):].strip("/").split("/")
        if len(rel) == 2 and rel[1] == MANIFEST and (m := _STEP_DIR.match(rel[0])):
            steps.add(int(m.group(1)))
    return sorted(steps, reverse=True)


def latest_complete_checkpoint(store: ObjectStore, pipeline: str, stage: str,
                               ) -> tuple[int, Manifest] | None:
    """Newest checkpoint whose manifest verifies; corrupt ones are skipped."""
    for step in list_checkpoint_steps(store, pipeline, stage):
        manifest = verify(store, checkpoint_prefix(pipeline, stage, step), MANIFEST)
        if manifest is not None:
            return step, manifest
    return None


def stage_complete(store: ObjectStore, pipeline: str, stage: str, *, deep: bool = True) -> Manifest | None:
    """The stage-complete manifest of a stage's export, when it verifies."""
    return verify(store, export_prefix(pipeline, stage), STAGE_COMPLETE, deep=deep)


@dataclass
class Heartbeat:
    """One rank's liveness, overwritten in place every few seconds while it trains.

    Readers: stall detection (no rank's step advanced for stallTimeoutSeconds) and the
    CLI's progress line. `attempt` tells a restarted stage's beats from the last attempt's.
    """

    rank: int
    step: int
    total_steps: int
    attempt: int = 0
    time: float = field(default_factory=time.time)
    loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    phase: str = "train"  # "startup" | "train" | "validation" | "checkpoint" | "done"
    # the newest validation pass (eve_trainer.validation): its loss and the step it was taken at
    # (the same on every rank); None before the first pass or without validation.data
    val_loss: float | None = None
    val_step: int | None = None
    # goodput (eve_contract.goodput): this process's start, the step loop's start and first step,
    # and cumulative seconds since then in "step" (compute of steps), "data" (waiting for
    # batches), "checkpoint" (the loop blocked by saves, the final upload wait, the export), "eval"
    started_at: float | None = None
    loop_at: float | None = None
    start_step: int | None = None
    timers: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> Heartbeat:
        data = json.loads(blob)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_heartbeats(store: ObjectStore, pipeline: str, stage: str) -> list[Heartbeat]:
    """Every rank's newest heartbeat (unreadable ones skipped), ordered by rank."""
    beats = []
    for key in store.list(heartbeat_prefix(pipeline, stage)):
        if not key.rsplit("/", 1)[-1].startswith("rank-"):
            continue
        try:
            beats.append(Heartbeat.from_json(store.get_bytes(key)))
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            continue
    return sorted(beats, key=lambda b: b.rank)
