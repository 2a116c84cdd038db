"""Rebuild the LLaMA / Llama-2 (Vicuna v1.5) tokenizer as a HF folder from llama-tokenizer-js.

    python scripts/build_llama_tokenizer.py <llama-tokenizer.js> <out dir>

The npm package llama-tokenizer-js (1.2.2) ships the LLaMA sentencepiece vocabulary (32,000
tokens, in id order, base64 of the '\\n'-joined token strings) and its BPE merges (base64 of
uint16 little-endian id pairs, in priority order): the tokenizer Vicuna-7B v1.5 uses. This
writes what `transformers.AutoTokenizer.from_pretrained` reads (tokenizer.json,
tokenizer_config.json, special_tokens_map.json), built with the `tokenizers` library as
transformers' own Llama converter builds it: BPE with byte fallback and fused unknowns, the
sentencepiece-style normaliser (prepend '▁', spaces to '▁'), `<s>` prepended, <unk>=0 <s>=1 </s>=2.
No network; scripts/install-llama-tokenizer.sh fetches the package.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import sys
from pathlib import Path

VOCAB_SIZE = 32000
SPECIAL = {"<unk>": 0, "<s>": 1, "</s>": 2}


def read_tables(js_source: str) -> tuple[list[str], list[tuple[int, int]]]:
    """(vocab in id order, merges as id pairs in priority order) from llama-tokenizer.js."""
    def constant(name: str) -> str:
        found = re.search(rf'const {name} = "([A-Za-z0-9+/=]+)"', js_source)
        if not found:
            raise ValueError(f"{name} not found in llama-tokenizer.js (another package version?)")
        return found.group(1)

    vocab = base64.b64decode(constant("llama_vocab_base64")).decode("utf-8").split("\n")
    raw = base64.b64decode(constant("llama_merges_binary"))
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    return vocab, list(zip(ids[0::2], ids[1::2]))


def package_test_cases(js_source: str) -> list[tuple[str, list[int]]]:
    """The package's own expectations: every `testCase("text", [ids])` of its defaultTests (the
    encoder with a BOS and the sentencepiece space prepended, as Llama encodes)."""
    cases = []
    for quote, text, ids in re.findall(r"testCase\((\"|')(.*?)(?<!\\)\1,\s*\[([\d,\s]+)\]\)", js_source, re.S):
        if quote == "'":
            text = text.replace('"', '\\"')
        cases.append((json.loads(f'"{text}"'.replace("\t", "\\t")), [int(i) for i in ids.split(",") if i.strip()]))
    if not cases:
        raise ValueError("no testCase(...) found in llama-tokenizer.js (another package version?)")
    return cases


def check(tok, js_source: str) -> int:  # noqa: ANN001 - tokenizers.Tokenizer
    """Raise unless the rebuilt tokenizer gives every id list the package's tests expect."""
    cases = package_test_cases(js_source)
    for text, ids in cases:
        got = tok.encode(text).ids
        if got != ids:
            raise ValueError(f"rebuilt tokenizer: {text[:40]!r} -> {got[:12]}..., the package expects {ids[:12]}...")
    return len(cases)


def build(vocab: list[str], merges: list[tuple[int, int]]):  # -> tokenizers.Tokenizer
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    if len(vocab) != VOCAB_SIZE or any(vocab[i] != t for t, i in SPECIAL.items()):
        raise ValueError(f"unexpected vocabulary: {len(vocab)} tokens, first {vocab[:3]}")
    model = models.BPE(vocab={t: i for i, t in enumerate(vocab)},
                       merges=[(vocab[a], vocab[b]) for a, b in merges],
                       unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL])
    return tok


def write(out: Path, tok) -> None:  # noqa: ANN001 - tokenizers.Tokenizer
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        # PreTrainedTokenizerFast runs tokenizer.json as written. (transformers 5's LlamaTokenizer class,
        # which lmsys/vicuna-7b-v1.5's config names, swaps in its own Metaspace pre-tokenizer and drops a
        # text's leading space: " grabbed" -> [1, 2646, ...] where sentencepiece gives [1, 29871, 2646, ...].)
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096, "padding_side": "right",
        "clean_up_tokenization_spaces": False, **special}, indent=2) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    source = Path(argv[0]).read_text(encoding="utf-8")
    vocab, merges = read_tables(source)
    tok = build(vocab, merges)
    checked = check(tok, source)
    write(Path(argv[1]), tok)
    print(f"{argv[1]}: {len(vocab)} tokens, {len(merges)} merges; the package's {checked} test cases give "
          "the ids it expects")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
