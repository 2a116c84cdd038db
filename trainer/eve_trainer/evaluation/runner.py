"""`evaluate`: answer a bench's questions with an export on this rank, merge through the output
store, score on rank 0 (eve_trainer.evaluation; docs/eval.md).

Generation is the reference's (eve/eval/model_vqa_loader.py): the `vicuna_v1` conversation with
`<image>\\n` before the question, greedy, `max_new_tokens` 128, the training image processing.
Questions go in batches of `batch_size`, left-padded (eve_model.inference.generate_batch gives
each row the answer it gets alone). Each rank answers one contiguous chunk of ceil(n / world)
questions (--num-chunks/--chunk-idx) and writes it to `<output>/<bench>/parts/`; after a
barrier rank 0 concatenates the parts in rank order (so the merged file is in question order),
scores, writes `answers.jsonl` and `scores.json` and sends the scores to every rank.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eve_contract.storage import open_store
from eve_trainer.evaluation import paths
from eve_trainer.evaluation.benches import BenchFiles
from eve_trainer.evaluation.benches import bench as get_bench
from eve_trainer.evaluation.questions import (
    IMAGE_TOKEN,
    IMAGES_DIR,
    SHARD_INDEX,
    BenchDataError,
    Question,
    chunk_bounds,
)

log = logging.getLogger("eve_trainer.evaluation")

SYSTEM_V1 = ("A chat between a curious user and an artificial intelligence assistant. "
             "The assistant gives helpful, detailed, and polite answers to the user's questions.")
#: How long rank 0 waits at the merge for the slowest rank (answering is uneven across ranks)
SYNC_TIMEOUT_S = float(os.environ.get("EVE_EVAL_SYNC_TIMEOUT_S", str(6 * 3600)))


def vicuna_v1_prompt(user: str) -> str:
    """conv_templates["vicuna_v1"] with one user turn and an empty assistant turn."""
    return f"{SYSTEM_V1} USER: {user} ASSISTANT:"


def user_turn(question: Question) -> str:
    """`<image>\\n` + the question when it has an image (mm_use_im_start_end is false in EVE)."""
    has_image = question.image is not None or question.image_b64 is not None
    return (IMAGE_TOKEN + "\n" + question.text) if has_image else question.text


# -- the model ------------------------------------------------------------------------------------


@dataclass
class ModelRef:
    """Where the export came from, and what the results are recorded against."""

    url: str
    """The export folder's URL (file:// or s3://)."""
    folder: Path
    model_id: str
    run_id: str | None = None
    """The stage run (stage-complete.json's mlflow_run_id)."""
    manifest_sha256: str | None = None
    registered: tuple[str, str] | None = None
    """(registered model, version) when given as models:/..."""
    temporary: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)

    def cleanup(self) -> None:
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)


def _resolve_registered(model: str, tracking_uri: str | None) -> tuple[str, tuple[str, str]]:
    """models:/name@alias or models:/name/<version> -> (the version's source URL, (name, version))."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    ref = model[len("models:/"):]
    client = MlflowClient(tracking_uri) if tracking_uri else MlflowClient()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, version = ref.rsplit("/", 1)
            mv = client.get_model_version(name, version)
        else:
            raise BenchDataError(f"model={model!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code) or "INVALID_PARAMETER_VALUE" in str(err.error_code):
            raise BenchDataError(f"model={model!r}: not in the registry at {tracking_uri or '(MLFLOW_TRACKING_URI)'} "
                                 f"({err.message})") from None
        raise
    return mv.source, (mv.name, str(mv.version))


def resolve_model(model: str, *, tracking_uri: str | None = None, endpoint_url: str | None = None,
                  region: str | None = None, model_id: str | None = None) -> ModelRef:
    """A local folder holding the export (downloaded from S3 when needed) and its lineage."""
    registered = None
    url = model
    if model.startswith("models:/"):
        url, registered = _resolve_registered(model, tracking_uri)
    store = open_store(url, endpoint_url=endpoint_url, region=region)
    if not store.exists("config.json"):
        raise BenchDataError(f"model={model!r}: {store.url} has no config.json; expected a stage export "
                             "(<output>/<pipeline>/<stage>/export) or models:/<name>@<alias>")
    temporary = store.url.startswith("s3://")
    if temporary:
        folder = Path(tempfile.mkdtemp(prefix="eve-eval-model-"))
        for key in store.list(""):
            store.download_file(key, folder / key)
    else:
        folder = Path(store.url.removeprefix("file://"))
    manifest: dict[str, Any] = {}
    sha = None
    marker = folder / "stage-complete.json"
    if marker.is_file():
        blob = marker.read_bytes()
        sha = hashlib.sha256(blob).hexdigest()
        try:
            manifest = json.loads(blob)
        except ValueError:
            manifest = {}
    name = model_id or (f"{manifest['pipeline']}/{manifest['stage']}" if manifest.get("pipeline") else
                        (f"{registered[0]}/{registered[1]}" if registered else folder.name))
    return ModelRef(store.url, folder, name, manifest.get("mlflow_run_id"), sha, registered, temporary, manifest)


# -- questions and images -------------------------------------------------------------------------


def _images_from_shards(store: Any, wanted: set[int]) -> dict[int, bytes]:
    """The image bytes of the wanted question indices from a converted bench (key = index)."""
    from eve_trainer.data.index import DatasetIndex
    from eve_trainer.data.shards import IMAGE_EXTS, iter_tar

    found: dict[int, bytes] = {}
    for shard in DatasetIndex.read(store).shards:
        if len(found) == len(wanted):
            break
        with store.open_read(shard.name) as stream:
            for sample in iter_tar(stream):
                try:
                    index = int(sample.key.rsplit("/", 1)[-1])
                except ValueError:
                    continue
                if index in wanted:
                    blob = next((sample.parts[e] for e in IMAGE_EXTS if e in sample.parts), None)
                    if blob is not None:
                        found[index] = blob
    return found


def load_images(files: BenchFiles, questions: list[Question]) -> list[Any]:
    """PIL images (RGB) of the questions, None for text-only ones; from images/ or the shards."""
    import base64

    from PIL import Image, UnidentifiedImageError

    shards = files.exists(SHARD_INDEX)
    wanted = {q.index for q in questions if q.image is not None and q.image_b64 is None}
    blobs = _images_from_shards(files.store, wanted) if shards and wanted else {}
    out = []
    for q in questions:
        if q.image_b64 is not None:
            blob = base64.b64decode(q.image_b64)
            where = f"question {q.question_id!r} (base64)"
        elif q.image is None:
            out.append(None)
            continue
        elif shards:
            if q.index not in blobs:
                raise BenchDataError(f"{files.bench}: the shards of {files.url} have no image for question "
                                     f"{q.question_id!r} (sample {q.index:09d})")
            blob, where = blobs[q.index], f"{files.url} sample {q.index:09d}"
        else:
            blob = files.read(f"{IMAGES_DIR}/{q.image}", f"the image of question {q.question_id!r}")
            where = f"{files.url}/{IMAGES_DIR}/{q.image}"
        try:
            image = Image.open(io.BytesIO(blob))
            out.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise BenchDataError(f"{files.bench}: {where} is not a readable image ({err})") from None
    return out


def answer_id(model_id: str, question_id: Any, text: str) -> str:
    """Deterministic (the reference draws a shortuuid): the same answers give the same file."""
    return hashlib.sha256(f"{model_id}\0{question_id}\0{text}".encode()).hexdigest()[:22]


def answer_line(question: Question, text: str, model_id: str) -> dict[str, Any]:
    return {"question_id": question.question_id, "prompt": question.prompt, "text": text,
            "answer_id": answer_id(model_id, question.question_id, text), "model_id": model_id, "metadata": {}}


# -- answering ------------------------------------------------------------------------------------


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    processor: Any


def load(ref: ModelRef, dtype: Any = None, device: str | None = None) -> Loaded:
    import torch

    from eve_model.inference import load_export

    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model, tokenizer, processor = load_export(ref.folder, dtype=dtype)
    return Loaded(model.to(device), tokenizer, processor)


def answer_questions(loaded: Loaded, questions: list[Question], images: list[Any], *, batch_size: int,
                     max_new_tokens: int, model_id: str, say: Callable[[int, float], None] | None = None,
                     ) -> list[dict[str, Any]]:
    from eve_model.inference import generate_batch

    lines: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for start in range(0, len(questions), batch_size):
        batch = questions[start:start + batch_size]
        prompts = [vicuna_v1_prompt(user_turn(q)) for q in batch]
        texts = generate_batch(loaded.model, loaded.tokenizer, loaded.processor, prompts,
                               images[start:start + batch_size], max_new_tokens=max_new_tokens)
        lines.extend(answer_line(q, t.removesuffix("</s>").strip(), model_id) for q, t in zip(batch, texts))
        if say is not None:
            say(len(lines), time.monotonic() - t0)
    return lines


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


# -- the whole run ---------------------------------------------------------------------------------


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _dist(rank: int, world_size: int) -> None:
    if world_size == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise ValueError(f"rank={rank}, world_size={world_size} but the process group has rank "
                             f"{dist.get_rank()} of {dist.get_world_size()}")
        return
    from eve_trainer.distributed import DistInfo, init_process_group

    init_process_group(DistInfo(rank, world_size, int(os.environ.get("LOCAL_RANK", "0"))),
                       collective_timeout_s=SYNC_TIMEOUT_S)


def _broadcast(obj: Any) -> Any:
    from eve_trainer.distributed import broadcast_object

    return broadcast_object(obj)


def _barrier() -> None:
    from eve_trainer.distributed import barrier

    barrier()


def merge_and_score(out_store: Any, name: str, files: BenchFiles, questions: list[Question], world: int,
                    model: ModelRef) -> dict[str, float]:
    """Rank 0: the parts in rank order -> answers.jsonl; the bench's scores and files."""
    from eve_trainer.evaluation.questions import parse_jsonl

    answers: list[dict[str, Any]] = []
    for r in range(world):
        key = paths.part_key(name, r, world)
        answers.extend(parse_jsonl(out_store.get_bytes(key), key))
    if [a["question_id"] for a in answers] != [q.question_id for q in questions]:
        raise RuntimeError(f"{name}: the merged parts do not list the questions in file order "
                           f"({len(answers)} answers for {len(questions)} questions)")
    scores, extra = get_bench(name).finish(answers, questions, files)
    scores = {k: float(v) for k, v in scores.items()}
    out_store.put_bytes(paths.answers_key(name), _jsonl(answers))
    for filename, blob in extra.items():
        out_store.put_bytes(f"{name}/{filename}", blob)
    record = {"bench": name, "model": model.url, "model_id": model.model_id, "questions": len(questions),
              "data": files.url, "scores": scores, "files": [paths.ANSWERS, *extra],
              "mlflow_run_id": model.run_id, "registered_model": list(model.registered or []) or None}
    out_store.put_bytes(paths.scores_key(name), json.dumps(record, indent=2).encode())
    for r in range(world):
        out_store.delete_prefix(paths.part_key(name, r, world))
    return scores


def evaluate(model: str, benches: dict[str, str], output: str, *, rank: int = 0, world_size: int = 1,
             max_new_tokens: int = 128, batch_size: int = 8, tracking_uri: str | None = None,
             endpoint_url: str | None = None, region: str | None = None, dtype: Any = None,
             device: str | None = None, log_to_mlflow: bool = True, model_id: str | None = None,
             progress: Callable[[str], None] | None = _say) -> dict[str, dict[str, float]]:
    if not benches:
        raise BenchDataError("no benchmark given; e.g. benches={'pope': '<bench folder URL>'}")
    for name in benches:
        get_bench(name)  # an unknown name fails before anything loads
    if max_new_tokens < 1 or batch_size < 1:
        raise BenchDataError(f"max_new_tokens={max_new_tokens}, batch_size={batch_size}: both must be >= 1")
    if not 0 <= rank < world_size:
        raise BenchDataError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    say = progress or (lambda line: None)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    ref = resolve_model(model, tracking_uri=tracking_uri, endpoint_url=endpoint_url, region=region,
                        model_id=model_id)
    out_store = open_store(output, endpoint_url=endpoint_url, region=region)
    plans = []
    for name, url in benches.items():
        files = BenchFiles(open_store(url, endpoint_url=endpoint_url, region=region), name)
        questions = get_bench(name).read_questions(files)
        if not questions:
            raise BenchDataError(f"{name}: {files.url} has no questions")
        get_bench(name).check(files, questions)
        plans.append((name, files, questions))
    try:
        _dist(rank, world_size)
        loaded = load(ref, dtype, device)
        results: dict[str, dict[str, float]] = {}
        for name, files, questions in plans:
            start, end = chunk_bounds(len(questions), world_size, rank)
            mine = questions[start:end]
            t0 = time.monotonic()

            def line(done: int, secs: float, name: str = name, total: int = len(mine)) -> None:
                rate = done / secs if secs > 0 else 0.0
                eta = (total - done) / rate if rate > 0 else 0.0
                say(f"[eve-eval] {name}: {done}/{total} questions on rank {rank} of {world_size} "
                    f"({rate:.2f} q/s, ETA {eta:.0f} s)")

            if mine:
                say(f"[eve-eval] {name}: rank {rank} of {world_size} answers questions {start}..{end - 1} of "
                    f"{len(questions)} ({files.url}) with {ref.model_id}")
            else:
                say(f"[eve-eval] {name}: rank {rank} of {world_size} has no questions ({len(questions)} in "
                    f"chunks of ceil({len(questions)}/{world_size}))")
            images = load_images(files, mine)
            lines = answer_questions(loaded, mine, images, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                     model_id=ref.model_id, say=line)
            out_store.put_bytes(paths.part_key(name, rank, world_size), _jsonl(lines))
            say(f"[eve-eval] {name}: rank {rank} answered {len(lines)} question(s) in "
                f"{time.monotonic() - t0:.1f} s")
            _barrier()  # every part written
            outcome: Any = None
            if rank == 0:
                try:
                    outcome = {"scores": merge_and_score(out_store, name, files, questions, world_size, ref)}
                except (BenchDataError, KeyError, ValueError) as err:
                    outcome = {"error": f"{name}: {err}"}
            outcome = _broadcast(outcome)
            if "error" in outcome:
                raise BenchDataError(outcome["error"])
            results[name] = outcome["scores"]
            if rank == 0:
                say(f"[eve-eval] {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in outcome["scores"].items()
                                                       if "/" not in k)
                    + f" -> {out_store.url}/{paths.scores_key(name)}")
        if rank == 0 and log_to_mlflow and tracking_uri:
            from eve_trainer.evaluation.tracking import record_results

            record_results(tracking_uri, ref, results, out_store, say=say)
        return results
    finally:
        ref.cleanup()
