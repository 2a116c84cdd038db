"""`load_tokenizer(spec)`: the builtin tiny tokenizer, or a HF tokenizer folder / s3:// URL.

Which spec a stage uses (data.tokenizer, else the LLM folder's own) is decided by
eve_trainer.stage_summary.tokenizer_source.

`builtin:tiny` is a byte-level BPE trained in-process on the fixed synthetic corpus
(synth.corpus), vocab <= 1024 to fit the tiny model, with Llama's special ids
`<unk>`=0, `<s>`=1, `</s>`=2 and pad = unk (as LLaVA sets it). Training is deterministic
(fixed corpus, fixed order), so every rank and every process gets the same ids; nothing
is downloaded. Tokenizers are cached per process and spec.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from eve_trainer.data.errors import DataError

TINY_VOCAB = 1024
_CACHE: dict[str, Any] = {}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                    "config.json", "generation_config.json")


def load_tokenizer(spec: str | None = "builtin:tiny", endpoint_url: str | None = None) -> Any:
    """A transformers PreTrainedTokenizer(Fast) for `spec` (cached per process).

    A stage's spec is `eve_trainer.stage_summary.tokenizer_source(cfg).where`, not `cfg.data.tokenizer`
    (None there means "the LLM's own, from init_from")."""
    if spec is None:
        raise DataError("no tokenizer given: data.tokenizer=None means the LLM's own tokenizer; resolve it with "
                        "eve_trainer.stage_summary.tokenizer_source(cfg)")
    if spec not in _CACHE:
        if spec == "builtin:tiny":
            _CACHE[spec] = _tiny()
        elif spec.startswith("builtin:"):
            raise DataError(f"unknown builtin tokenizer {spec!r}; the only builtin is builtin:tiny")
        else:
            _CACHE[spec] = _from_url(spec, endpoint_url)
    return _CACHE[spec]


def _tiny() -> Any:
    import os

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from eve_trainer.data.synth import corpus

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, min_frequency=2, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<unk>", padding_side="right",
                                   model_max_length=1 << 20)
    assert (fast.unk_token_id, fast.bos_token_id, fast.eos_token_id) == (0, 1, 2)
    assert len(fast) <= TINY_VOCAB
    return fast


def _from_url(spec: str, endpoint_url: str | None) -> Any:
    from transformers import AutoTokenizer

    from eve_contract.storage import StorageError, StorageUnavailable, open_store

    if spec.startswith("s3://"):
        store = open_store(spec, endpoint_url=endpoint_url)
        target = Path(tempfile.mkdtemp(prefix="eve-tokenizer-"))
        try:
            names = [k for k in store.list() if "/" not in k and k in _TOKENIZER_FILES]
        except StorageUnavailable:
            raise  # an outage is retried, not the user's to fix
        except Exception as err:  # noqa: BLE001 - boto errors vary; the message names the URL
            raise DataError(f"cannot list tokenizer at {spec}: {err}") from None
        if not names:
            raise DataError(f"no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...) at {spec}")
        for name in names:
            store.download_file(name, target / name)
        path = str(target)
    else:
        path = spec[len("file://"):] if spec.startswith("file://") else spec
        if not Path(path).is_dir():
            raise DataError(f"tokenizer {spec!r} is neither builtin:tiny nor an existing folder or s3:// URL")
    try:
        tok = AutoTokenizer.from_pretrained(path, use_fast=True)
    except (OSError, ValueError, StorageError) as err:
        raise DataError(f"cannot load the tokenizer at {spec}: {err}") from None
    if tok.pad_token_id is None:  # LLaVA: pad = unk for Vicuna/Llama
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    tok.padding_side = "right"
    return tok
