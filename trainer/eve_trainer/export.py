"""The end of a stage: the HF-format model and `stage-complete.json`, written last.

Rank 0 gathers the full weights (ZeRO-3: DeepSpeed's 16-bit gather, which every rank must
join; ZeRO-0/1/2: every rank holds them already) and calls `save_pretrained`, so the export
has config.json + safetensors under the published parameter names, the tokenizer files
(tokenizer.json, tokenizer_config.json, ...) and `preprocessor_config.json` (the image
processor's settings), so `eve_model.inference.load_export` serves it as it is. The next
stage's `init_from` is this export's URL.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from eve_contract import layout
from eve_contract.layout import Manifest
from eve_contract.storage import ObjectStore, join
from eve_trainer import distributed as D


def export_stage(engine: Any, *, store: ObjectStore, pipeline: str, stage: str, step: int, rank: int,
                 zero_stage: int, config_hash: str, mlflow_run_id: str | None,
                 extra: dict[str, Any] | None = None, tokenizer: Any = None, processor: Any = None,
                 ) -> Manifest | None:
    """Collective. Rank 0 returns the stage-complete manifest."""
    state_dict = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    manifest = None
    if rank == 0:
        prefix = layout.export_prefix(pipeline, stage)
        # the old marker goes first: a half-replaced export must never look complete
        store.delete_prefix(join(prefix, layout.STAGE_COMPLETE))
        store.delete_prefix(prefix)
        tmp = Path(tempfile.mkdtemp(prefix="eve-export-"))
        try:
            model = engine.module
            model.save_pretrained(tmp, state_dict=state_dict)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if processor is not None:
                from eve_model.inference import PROCESSOR_FILE, processor_config

                (tmp / PROCESSOR_FILE).write_text(json.dumps(processor_config(processor), indent=2))
            entries = layout.entries_for_dir(tmp)
            for entry in entries:
                store.upload_file(tmp / entry.path, join(prefix, entry.path))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        manifest = Manifest(kind="stage-complete", pipeline=pipeline, stage=stage, step=step, files=entries,
                            config_hash=config_hash, mlflow_run_id=mlflow_run_id, extra=dict(extra or {}))
        store.put_bytes(join(prefix, layout.STAGE_COMPLETE), manifest.to_json())
    D.barrier()
    return manifest
