"""Tokenizer and templates: deterministic ids, LLaVA label masking."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eve_trainer.data.templates import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    SYSTEM_V1,
    SampleError,
    build_plain,
    build_vicuna_v1,
)

_HASH = ("from eve_trainer.data import load_tokenizer; import hashlib; "
         "print(hashlib.sha256(load_tokenizer('builtin:tiny').backend_tokenizer.to_str().encode()).hexdigest())")


def test_tiny_tokenizer(tok) -> None:  # noqa: ANN001
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    assert len(tok) <= 1024
    ids = tok("A red box in the middle.", add_special_tokens=False).input_ids
    assert tok.decode(ids) == "A red box in the middle." and len(ids) < 10
    assert tok("x</s>", add_special_tokens=False).input_ids[-1] == 2
    from eve_trainer.data import load_tokenizer

    assert load_tokenizer("builtin:tiny") is tok  # cached per process


def test_tiny_tokenizer_same_in_every_process(tok) -> None:  # noqa: ANN001
    import hashlib

    here = hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", _HASH], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"})
        assert out.stdout.strip() == here


def test_constants_match_eve_model() -> None:
    from eve_model.constants import IGNORE_INDEX as ign
    from eve_model.constants import IMAGE_TOKEN_INDEX as img

    assert (IMAGE_TOKEN_INDEX, IGNORE_INDEX) == (img, ign) == (-200, -100)


def test_plain_masks_bos_and_image(tok) -> None:  # noqa: ANN001
    ids, labels = build_plain({"caption": "A red box."}, True, tok, 64)
    assert ids[:2] == [1, IMAGE_TOKEN_INDEX] and ids.count(IMAGE_TOKEN_INDEX) == 1
    assert labels[:2] == [IGNORE_INDEX, IGNORE_INDEX] and labels[2:] == ids[2:]
    assert tok.decode(ids[2:]) == "A red box.\n" and 2 not in ids  # "\n" separator, no EOS
    ids, labels = build_plain({"caption": "no image"}, False, tok, 64)  # text-only: BOS masked only
    assert IMAGE_TOKEN_INDEX not in ids and labels[0] == IGNORE_INDEX and labels[1:] == ids[1:]
    ids, labels = build_plain({"caption": "a " * 100}, True, tok, 20)
    assert len(ids) == len(labels) == 20


def test_vicuna_masks_system_and_user_turns(tok) -> None:  # noqa: ANN001
    meta = {"conversations": [{"from": "human", "value": "What is it?\n<image>"},
                              {"from": "gpt", "value": "A cat."},
                              {"from": "human", "value": "Which color?"}, {"from": "gpt", "value": "Red."}]}
    ids, labels = build_vicuna_v1(meta, True, tok, 512)
    assert ids[0] == 1 and ids.count(IMAGE_TOKEN_INDEX) == 1
    text = tok.decode([i for i in ids[1:] if i >= 0])
    assert text.startswith(SYSTEM_V1 + " USER: \nWhat is it? ASSISTANT: A cat.</s>USER: Which color?")
    learned = tok.decode([t for t in labels if t != IGNORE_INDEX])
    assert learned.replace(" ", "") == "Acat.</s>Red.</s>"
    # everything before the first answer (system, user turn, "ASSISTANT:") is masked
    first = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    assert tok.decode([i for i in ids[:first] if i >= 0]).endswith("ASSISTANT:")


@pytest.mark.parametrize("meta,has_image,reason", [
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}, True,
     "image_token_mismatch"),
    ({"conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "x"}]}, False,
     "image_token_mismatch"),
    ({"conversations": [{"from": "gpt", "value": "x"}, {"from": "gpt", "value": "y"}]}, False, "bad_conversation"),
    ({"other": 1}, False, "missing_keys"),
])
def test_bad_conversations(tok, meta, has_image, reason) -> None:  # noqa: ANN001
    with pytest.raises(SampleError) as err:
        build_vicuna_v1(meta, has_image, tok, 128)
    assert err.value.reason == reason


def test_tokenizer_from_folder_and_s3(s3_env, bucket, tok, tmp_path) -> None:  # noqa: ANN001
    from eve_contract.storage import open_store
    from eve_trainer.data import load_tokenizer

    tok.save_pretrained(tmp_path / "tok")
    store = open_store(f"s3://{bucket}/tok")
    for p in (tmp_path / "tok").iterdir():
        store.upload_file(p, p.name)
    text = "USER: <image>\nWhat is it? ASSISTANT: A red box.</s>"
    for spec in (str(tmp_path / "tok"), f"s3://{bucket}/tok"):
        other = load_tokenizer(spec)
        assert other(text, add_special_tokens=False).input_ids == tok(text, add_special_tokens=False).input_ids
        assert other.pad_token_id == 0
