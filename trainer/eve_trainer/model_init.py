"""Where the weights come from: a checkpoint (resume), an EVE HF export, a Llama folder
(prealign), or random init (tiny preset / tests).

`check_init_source` is cheap and runs before anything heavy, so a wrong `init_from`
fails with exit code 2 and a message naming the URL.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eve_contract.storage import StorageAccessError, open_store
from eve_trainer.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger("eve_trainer.model_init")

EVE_MODEL_TYPE = "eve"
LLAMA_MODEL_TYPES = ("llama",)
#: config.json keys that must equal the preset's for the weights to fit
ARCH_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
             "num_key_value_heads", "vocab_size")


def check_init_source(cfg: TrainConfig, preset_config: Any) -> str | None:
    """Validate `init_from` against the preset; returns 'eve', 'llama' or None (random init)."""
    url = cfg.init_from
    if not url:
        return None
    store = open_store(url, endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region)
    store.check()
    try:
        hf_config = json.loads(store.get_bytes("config.json"))
    except FileNotFoundError:
        raise ConfigError(f"init_from={url!r} has no config.json: expected an EVE HF export "
                          f"(<output>/<pipeline>/<stage>/export) or, for prealign, a Llama folder") from None
    except ValueError as err:
        raise ConfigError(f"init_from={url!r}: config.json is not valid JSON ({err})") from None
    model_type = hf_config.get("model_type")
    if model_type == EVE_MODEL_TYPE:
        kind = "eve"
    elif model_type in LLAMA_MODEL_TYPES and cfg.stage == "prealign":
        kind = "llama"
    elif model_type in LLAMA_MODEL_TYPES:
        raise ConfigError(f"init_from={url!r} is a plain {model_type} model; stage {cfg.stage} starts from the "
                          f"previous stage's EVE export (only prealign starts from a Llama/Vicuna folder)")
    else:
        raise ConfigError(f"init_from={url!r} is a {model_type!r} model, not an EVE ({EVE_MODEL_TYPE!r}) "
                          f"or Llama checkpoint: wrong architecture")
    diff = [f"{k}={hf_config[k]} (preset {cfg.model.preset}: {getattr(preset_config, k)})"
            for k in ARCH_KEYS if k in hf_config and hf_config[k] != getattr(preset_config, k, None)]
    if diff:
        raise ConfigError(f"init_from={url!r} does not fit model.preset={cfg.model.preset}: "
                          + ", ".join(diff) + "; pick the matching model.preset")
    return kind


def fetch_dir(url: str, cfg: TrainConfig, dest: Path | None = None) -> Path:
    """A local folder with the contents of `url` (downloaded when it is in S3)."""
    if not url.startswith("s3://"):
        return Path(open_store(url).url.removeprefix("file://"))
    store = open_store(url, endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region)
    dest = dest or Path(tempfile.mkdtemp(prefix="eve-init-"))
    keys = store.list("")
    if not keys:
        raise StorageAccessError(f"init_from={url!r} is empty (no files under this prefix)")
    for key in keys:
        store.download_file(key, dest / key)
    return dest


def build_model(cfg: TrainConfig, preset_config: Any, *, init_kind: str | None, load_weights: bool,
                ) -> torch.nn.Module:
    """The model in fp32 on CPU; DeepSpeed moves and casts it.

    load_weights=False when resuming: the checkpoint overwrites every weight anyway.
    """
    from eve_model import EveForCausalLM, from_llama_pretrained, load_clip_teacher, load_eve_checkpoint

    if not load_weights or init_kind is None:
        model = EveForCausalLM(preset_config)
        if load_weights and preset_config.clip_teacher_path:
            load_clip_teacher(model, preset_config.clip_teacher_path)
        return model
    folder = fetch_dir(cfg.init_from, cfg)
    downloaded = cfg.init_from.startswith("s3://")
    try:
        if init_kind == "llama":
            model, report = from_llama_pretrained(folder, preset=cfg.model.preset,
                                                  clip_teacher_path=preset_config.clip_teacher_path)
        else:
            model, report = load_eve_checkpoint(folder, config=preset_config)
    except (RuntimeError, ValueError, OSError, KeyError) as err:
        raise ConfigError(f"init_from={cfg.init_from!r} cannot be loaded into model.preset={cfg.model.preset}: "
                          f"{str(err).splitlines()[0][:400]}") from None
    finally:
        if downloaded:
            shutil.rmtree(folder, ignore_errors=True)
    total = len(model.state_dict())
    llm_missing = [k for k in report.missing if init_kind == "eve" or not any(v in k for v in _VISION_KEYS)]
    if report.unexpected or len(llm_missing) > total // 2:
        raise ConfigError(f"init_from={cfg.init_from!r} does not match the EVE architecture: "
                          f"{len(llm_missing)} of {total} weights missing, {len(report.unexpected)} unexpected "
                          f"(e.g. {(llm_missing + report.unexpected)[:3]})")
    if llm_missing:
        log.warning("init_from=%s: %d weights not in the checkpoint keep their fresh init (e.g. %s)",
                    cfg.init_from, len(llm_missing), llm_missing[:3])
    return model


#: parts a Llama folder cannot have: they start from fresh init in prealign
_VISION_KEYS = ("vision_tower", "mm_projector", "vision_clip")
