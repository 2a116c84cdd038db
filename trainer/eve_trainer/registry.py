"""The model registry: one registered model per pipeline family, a version per stage export.

    eve-tiny                       registered model (name: mlflow.registered_model, else eve-<preset>)
      version 1  prealign export   alias prealign
      version 2  pretrain export   alias pretrain
      version 3  sft export        alias sft      (and `latest`: MLflow resolves models:/eve-tiny@latest
                                                  to the newest version itself; the name is reserved)

Each version's source is the verified export folder (the URL whose `stage-complete.json`
lists every file with its sha256) and its tags carry that manifest's sha256, the pipeline,
the stage and the step. Load one with `eve_model.inference.load_export` after
`mlflow.artifacts.download_artifacts("models:/eve-tiny@sft")` (see docs/trainer.md).
No MLflow flavour fits an EVE model (transformers' pipelines do not know its image splice),
and logging the weights again as run artifacts would double multi-GB exports; the version
points at the export in place instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eve_contract import tracking_names as N


@dataclass(frozen=True)
class ExportVersion:
    name: str
    """The registered model (one per family)."""
    stage: str
    pipeline: str
    source: str
    """URL of the export folder."""
    manifest_sha256: str
    """sha256 of the export's stage-complete.json."""
    step: int
    extra_tags: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        return {N.TAG_PIPELINE: self.pipeline, N.TAG_STAGE: self.stage, N.TAG_EXPORT_URI: self.source,
                N.TAG_MANIFEST_SHA256: self.manifest_sha256, "eve.step": str(self.step), **self.extra_tags}


def register_export(client: Any, export: ExportVersion, *, run_id: str | None) -> str:
    """Create (once) the version for this export and point the stage's alias at it.

    Idempotent: a retry after a partial failure finds the version by its manifest digest."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            export.name, tags={"eve.kind": "eve-model-family"},
            description="EVE encoder-free VLM exports: one version per stage export; aliases name the stage "
                        "(prealign, pretrain, sft); @latest is the newest. Load with eve_model.inference.load_export.")
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise
    version = _existing_version(client, export, run_id)
    if version is None:
        version = client.create_model_version(
            export.name, source=export.source, run_id=run_id, tags=export.tags(),
            description=f"{export.pipeline}/{export.stage} export at step {export.step}").version
    client.set_registered_model_alias(export.name, N.stage_alias(export.stage), str(version))
    return str(version)


def _existing_version(client: Any, export: ExportVersion, run_id: str | None) -> str | None:
    query = f"name='{export.name}'" + (f" and run_id='{run_id}'" if run_id else "")
    for mv in client.search_model_versions(query):
        if (mv.tags or {}).get(N.TAG_MANIFEST_SHA256) == export.manifest_sha256 and mv.source == export.source:
            return str(mv.version)
    return None
