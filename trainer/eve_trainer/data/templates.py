"""Text of a sample -> (input_ids, labels) under the EVE/LLaVA templates.

- `plain` (stages 1-2): `"<image>" + caption + "\\n"` -> `[BOS, -200, caption..., \\n]`, no EOS;
  BOS and the image placeholder are masked (LLaVA `preprocess_plain`).
- `vicuna_v1` (stage 3): `SYSTEM USER: <image>\\nq ASSISTANT: a</s>USER: ...`; the system
  prompt and every user turn up to and including `ASSISTANT: ` are masked, answers and
  their `</s>` are learned (LLaVA `preprocess_v1`).

`<image>` becomes the single id -200, each text chunk being tokenised on its own
(LLaVA `tokenizer_image_token`). LLaVA finds the masked spans with per-round length
arithmetic ("-2") that only holds for the Llama SentencePiece tokenizer; here the spans
are character ranges mapped through the fast tokenizer's offsets, so the mask is exact
for any tokenizer while the ids stay those of whole-string tokenisation.
"""

from __future__ import annotations

from typing import Any

IMAGE_TOKEN_INDEX = -200  # == eve_model.IMAGE_TOKEN_INDEX (checked by a test)
IGNORE_INDEX = -100       # == eve_model.IGNORE_INDEX
IMAGE_TOKEN = "<image>"
SYSTEM_V1 = ("A chat between a curious user and an artificial intelligence assistant. "
             "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_ROLES = {"human": "USER", "user": "USER", "gpt": "ASSISTANT", "assistant": "ASSISTANT"}


class SampleError(ValueError):
    """This sample cannot be used; `reason` is the key counted in loader stats."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def tokenize_with_image(text: str, tok: Any) -> tuple[list[int], list[tuple[int, int]]]:
    """LLaVA's tokenizer_image_token plus character offsets: [BOS] chunk -200 chunk ..."""
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    if tok.bos_token_id is not None:
        ids.append(tok.bos_token_id)
        spans.append((0, 0))
    pos = 0
    for i, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
            spans.append((pos, pos + len(IMAGE_TOKEN)))
            pos += len(IMAGE_TOKEN)
        if chunk:
            enc = tok(chunk, add_special_tokens=False, return_offsets_mapping=True)
            ids.extend(enc["input_ids"])
            spans.extend((pos + a, pos + b) for a, b in enc["offset_mapping"])
        pos += len(chunk)
    return ids, spans


def _labels(ids: list[int], spans: list[tuple[int, int]], targets: list[tuple[int, int]]) -> list[int]:
    """Keep a token's id as label when its character span overlaps a target range."""
    out = []
    for tid, (a, b) in zip(ids, spans):
        keep = tid >= 0 and b > a and any(b > s and a < e for s, e in targets)
        out.append(tid if keep else IGNORE_INDEX)
    return out


def conversation_turns(meta: dict[str, Any], has_image: bool) -> list[tuple[str, str]]:
    """Validated (role, text) turns, human first, alternating, `<image>` moved to the front
    of its turn followed by a newline (LLaVA preprocess_multimodal)."""
    conv = meta.get("conversations")
    if conv is None:
        if not isinstance(meta.get("caption"), str):
            raise SampleError("missing_keys", "json has neither 'caption' nor 'conversations'")
        conv = [{"from": "human", "value": IMAGE_TOKEN if has_image else ""},
                {"from": "gpt", "value": meta["caption"]}]
    if not isinstance(conv, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str)
                                             and t.get("from") in _ROLES for t in conv):
        raise SampleError("bad_conversation", "conversations must be a list of {from, value}")
    turns = [(_ROLES[t["from"]], t["value"]) for t in conv]
    while turns and turns[0][0] != "USER":
        turns = turns[1:]
    if not turns or any(role != ("USER", "ASSISTANT")[i % 2] for i, (role, _) in enumerate(turns)):
        raise SampleError("bad_conversation", "turns must alternate human/gpt")
    n_img = sum(v.count(IMAGE_TOKEN) for _, v in turns)
    if n_img != (1 if has_image else 0):
        raise SampleError("image_token_mismatch",
                          f"{n_img} <image> tokens for {'one image' if has_image else 'no image'}")
    out = []
    for role, value in turns:
        if IMAGE_TOKEN in value:
            value = IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()
        out.append((role, value))
    return out


def build_plain(meta: dict[str, Any], has_image: bool, tok: Any, max_length: int) -> tuple[list[int], list[int]]:
    if isinstance(meta.get("caption"), str):
        text = meta["caption"]
    elif "conversations" in meta:
        turns = conversation_turns(meta, has_image)
        answers = [v for role, v in turns if role == "ASSISTANT"]
        if not answers:
            raise SampleError("bad_conversation", "no gpt turn")
        text = answers[0]
    else:
        raise SampleError("missing_keys", "json has neither 'caption' nor 'conversations'")
    if IMAGE_TOKEN in text:
        raise SampleError("image_token_mismatch", "caption contains <image>")
    prefix = IMAGE_TOKEN if has_image else ""
    full = prefix + text + "\n"
    ids, spans = tokenize_with_image(full, tok)
    labels = _labels(ids, spans, [(len(prefix), len(full))])
    return ids[:max_length], labels[:max_length]


def build_vicuna_v1(meta: dict[str, Any], has_image: bool, tok: Any, max_length: int,
                    system: str = SYSTEM_V1) -> tuple[list[int], list[int]]:
    turns = conversation_turns(meta, has_image)
    eos = tok.eos_token or "</s>"
    text, targets = system + " ", []
    for role, value in turns:
        if role == "USER":
            text += f"USER: {value} "
        else:
            text += "ASSISTANT: "
            start = len(text)
            text += value + eos
            targets.append((start, len(text)))
    if len(turns) % 2:  # trailing question without answer: the prompt ends "ASSISTANT:"
        text += "ASSISTANT:"
    ids, spans = tokenize_with_image(text, tok)
    labels = _labels(ids, spans, targets)
    return ids[:max_length], labels[:max_length]


def build(template: str, meta: dict[str, Any], has_image: bool, tok: Any, max_length: int
          ) -> tuple[list[int], list[int]]:
    if template == "plain":
        return build_plain(meta, has_image, tok, max_length)
    if template == "vicuna_v1":
        return build_vicuna_v1(meta, has_image, tok, max_length)
    raise ValueError(f"unknown template {template!r}; use plain or vicuna_v1")
