"""A small synthetic dataset for demos and tests, and the word lists the tiny tokenizer
is trained on (one vocabulary for both, so synthetic text tokenises compactly).

Images are random gradients with a few coloured boxes, of varied aspect ratios; captions
name the colours and shapes. `kind="conversation"` writes LLaVA-style conversations for
SFT. About 1 in 10 samples is text-only. Everything follows from `seed`.

`profile="eve"` draws lengths like EVE's data instead of the compact demo ones: photo aspect
ratios (mostly 4:3, 3:2, 16:9, 1:1, their portrait forms, a few panoramas), so a 672 px image
gives 126-601 visual tokens; captions of 10-60 words (stages 1-2) and conversations of 1-8
turns, about 50-1500 words (SFT). The tiny tokenizer turns most synthetic words into one token.

`profile="shapes"` is learnable: a coloured shape (circle, square, triangle in red, green, blue or
yellow) on a plain background, on the left or the right; the caption says exactly that
("A red circle on the left."), and the conversations ask
what a model can only answer by looking ("Is there a red circle in the image?" yes/no, balanced;
"What color is the square?"; "What shape is on the left?"). `write_shapes_pope` and
`write_shapes_gqa` write held-out benchmarks of such images in POPE's and GQA's formats
(docs/data.md). `make demo` trains on the profile and scores on both.
"""

from __future__ import annotations

import io
import json
import random
from typing import Any

from eve_trainer.data.index import DatasetIndex

COLORS = ["red", "green", "blue", "yellow", "orange", "purple", "white", "black", "gray", "pink",
          "brown", "cyan"]
SHAPES = ["box", "square", "rectangle", "block", "patch", "stripe"]
OBJECTS = ["cat", "dog", "car", "tree", "house", "person", "bird", "boat", "cup", "chair", "table",
           "flower", "road", "sky", "mountain", "river", "book", "phone", "window", "door"]
ADJECTIVES = ["small", "large", "bright", "dark", "old", "new", "tall", "short", "wide", "narrow",
              "soft", "sharp", "quiet", "busy", "simple", "colorful"]
PLACES = ["in the middle", "on the left", "on the right", "at the top", "at the bottom",
          "in the corner", "near the edge", "in the background", "in the foreground"]
VERBS = ["shows", "contains", "depicts", "has", "features", "displays"]
QUESTIONS = ["What is in the image?", "Describe the image in detail.", "What color is the main object?",
             "How many boxes are there?", "Where is the largest box?", "What does the picture show?",
             "Is there anything unusual here?", "Summarize the scene briefly."]
TEXT_QUESTIONS = ["Tell me a fact about the {o}.", "What is a {a} {o}?", "Write a short sentence about a {c} {o}.",
                  "Why is the {o} {a}?"]
#: the learnable `shapes` profile: what is drawn, and so what the text may say
SHAPE_COLORS = ["red", "green", "blue", "yellow"]
SHAPE_KINDS = ["circle", "square", "triangle"]
SHAPE_SIDES = ["left", "right"]
#: LLaVA's instruction for one-word answers, appended to every yes/no and colour question (as LLaVA's
#: POPE and GQA question files have it)
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def corpus() -> list[str]:
    """The fixed text the builtin tiny tokenizer is trained on; order and content never
    depend on anything but this module, so every process trains the same merges."""
    rng = random.Random(1234)
    lines = [SYSTEM, "USER: ASSISTANT: </s> <image>\n", *QUESTIONS,
             " ".join(COLORS), " ".join(SHAPES), " ".join(OBJECTS), " ".join(ADJECTIVES),
             " ".join(PLACES), " ".join(VERBS), "0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' \" ( ) - \n"]
    for _ in range(600):  # the shapes profile's sentences (a fixed stream of their own)
        objs = shape_objects(rng)
        lines.append(shapes_caption(objs))
        c, k = rng.choice(SHAPE_COLORS), rng.choice(SHAPE_KINDS)
        lines.append(f"Is there a {c} {k} in the image?{SHORT_ANSWER} {rng.choice(['Yes', 'No'])}")
        lines.append(f"What color is the {k}? {c.capitalize()}. What shape is on the {rng.choice(SHAPE_SIDES)}? "
                     f"A {k}.")
    for i in range(3000):
        lines.append(caption(rng, rng.randint(1, 4)))
        if i % 10 == 0:  # the vicuna_v1 frame, so its words become single tokens
            lines.append(f"{SYSTEM} USER: <image>\n{rng.choice(QUESTIONS)} ASSISTANT: "
                         f"{caption(rng, 1)}</s>USER: {rng.choice(QUESTIONS)} ASSISTANT: ok</s>")
        lines.append(rng.choice(TEXT_QUESTIONS).format(o=rng.choice(OBJECTS), a=rng.choice(ADJECTIVES),
                                                       c=rng.choice(COLORS)))
    return lines


def caption(rng: random.Random, n_boxes: int, colors: list[str] | None = None) -> str:
    colors = colors or [rng.choice(COLORS) for _ in range(n_boxes)]
    obj = rng.choice(OBJECTS)
    parts = [f"A {rng.choice(ADJECTIVES)} image that {rng.choice(VERBS)} {n_boxes} "
             f"{'box' if n_boxes == 1 else 'boxes'}."]
    for c in colors:
        parts.append(f"A {c} {rng.choice(SHAPES)} {rng.choice(PLACES)}.")
    parts.append(f"It looks like a {rng.choice(COLORS)} {obj} {rng.choice(PLACES)}.")
    return " ".join(parts)


PROFILES = ("demo", "eve", "shapes")
#: (width/height, weight): photo aspect ratios as they occur in web caption data (landscape
#: 4:3 and 3:2 dominate, then square, 16:9 and the portrait forms; panoramas are rare).
EVE_ASPECTS = ((4 / 3, 24), (3 / 2, 18), (1.0, 14), (16 / 9, 12), (3 / 4, 10), (2 / 3, 9), (9 / 16, 5),
               (2.0, 3), (1 / 2, 2), (3.0, 1.5), (1 / 3, 1), (5.0, 0.5))


def pick_aspect(rng: random.Random, profile: str) -> float:
    if profile == "eve":
        values, weights = zip(*EVE_ASPECTS)
        return rng.choices(values, weights)[0]
    return rng.choice([1.0, 4 / 3, 3 / 4, 16 / 9, 9 / 16, 2.0, 0.5, 1.5])


def long_text(rng: random.Random, words: int, colors: list[str] | None) -> str:
    """Caption-like sentences until about `words` words."""
    out: list[str] = []
    while sum(len(x.split()) for x in out) < words:
        out.append(caption(rng, len(colors) if colors else rng.randint(1, 3), colors))
    return " ".join(" ".join(out).split()[:words])


def make_image(rng: random.Random, size_range: tuple[int, int], profile: str = "demo") -> tuple[Any, list[str]]:
    """A random RGB PIL image (varied aspect ratio) and the colour names of its boxes."""
    import numpy as np
    from PIL import Image, ImageDraw

    lo, hi = size_range
    long_side = rng.randint(lo, hi)
    aspect = pick_aspect(rng, profile)
    w, h = (long_side, max(8, int(long_side / aspect))) if aspect >= 1 else (max(8, int(long_side * aspect)), long_side)
    np_rng = np.random.default_rng(rng.getrandbits(32))
    c0, c1 = np_rng.integers(0, 256, 3), np_rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    row = (c0 * (1 - t) + c1 * t).astype(np.uint8)
    arr = np.repeat(row, h, axis=0)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    names = []
    for _ in range(rng.randint(1, 4)):
        name = rng.choice(COLORS)
        names.append(name)
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = min(w, x0 + rng.randint(4, max(5, w // 2))), min(h, y0 + rng.randint(4, max(5, h // 2)))
        draw.rectangle([x0, y0, x1, y1], fill=_RGB[name])
    return img, names


_RGB = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (240, 220, 40),
        "orange": (250, 140, 20), "purple": (140, 40, 180), "white": (250, 250, 250), "black": (5, 5, 5),
        "gray": (128, 128, 128), "pink": (250, 150, 190), "brown": (120, 70, 30), "cyan": (40, 220, 230)}


# -- the learnable profile: coloured shapes --------------------------------------------------------


def shape_objects(rng: random.Random, two: float = 0.0) -> list[tuple[str, str, str]]:
    """One (color, shape, side) object, or with probability `two` two on different sides that differ
    in color or shape. The demo draws one: within its CPU minutes the tiny model learns to name the
    colour of the one object (docs/benchmarks.md); two objects take it far longer."""
    if rng.random() >= two:
        return [(rng.choice(SHAPE_COLORS), rng.choice(SHAPE_KINDS), rng.choice(SHAPE_SIDES))]
    first = (rng.choice(SHAPE_COLORS), rng.choice(SHAPE_KINDS))
    second = first
    while second == first:
        second = (rng.choice(SHAPE_COLORS), rng.choice(SHAPE_KINDS))
    return [(*first, "left"), (*second, "right")]


def shapes_caption(objs: list[tuple[str, str, str]]) -> str:
    parts = [f"a {c} {k} on the {side}" for c, k, side in objs]
    text = " and ".join(parts)
    return text[0].upper() + text[1:] + "."


def make_shapes_image(rng: random.Random, objs: list[tuple[str, str, str]], size_range: tuple[int, int]) -> Any:
    """A plain light background with each shape filling most of its half."""
    from PIL import Image, ImageDraw

    lo, hi = size_range
    h = rng.randint(lo, hi)
    w = round(h * rng.choice([1.0, 4 / 3, 3 / 2]))
    shade = rng.randint(200, 240)
    img = Image.new("RGB", (w, h), (shade, shade, shade))
    draw = ImageDraw.Draw(img)
    for color, kind, side in objs:
        half = (0, w // 2) if side == "left" else (w // 2, w)
        span = min(half[1] - half[0], h)
        size = round(span * rng.uniform(0.55, 0.85))
        x0 = half[0] + rng.randint(0, half[1] - half[0] - size)
        y0 = rng.randint(0, h - size)
        box = [x0, y0, x0 + size, y0 + size]
        fill = _RGB[color]
        if kind == "circle":
            draw.ellipse(box, fill=fill)
        elif kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x0 + size / 2, y0), (x0 + size, y0 + size), (x0, y0 + size)], fill=fill)
    return img


def absent_object(rng: random.Random, objs: list[tuple[str, str, str]], adversarial: bool = False,
                  ) -> tuple[str, str]:
    """A (color, shape) not in the image; `adversarial`: sharing the color or the shape of one that is."""
    present = {(c, k) for c, k, _ in objs}
    while True:
        if adversarial:
            c, k, _ = rng.choice(objs)
            pair = (c, rng.choice(SHAPE_KINDS)) if rng.random() < 0.5 else (rng.choice(SHAPE_COLORS), k)
        else:
            pair = (rng.choice(SHAPE_COLORS), rng.choice(SHAPE_KINDS))
        if pair not in present:
            return pair


def yes_no_question(rng: random.Random, objs: list[tuple[str, str, str]], answer: str,
                    adversarial: bool = False) -> str:
    c, k = (rng.choice(objs)[:2]) if answer == "yes" else absent_object(rng, objs, adversarial)
    return f"Is there a {c} {k} in the image?"


def _shapes_turn(rng: random.Random, objs: list[tuple[str, str, str]]) -> tuple[str, str]:
    """One question about the image and its answer."""
    what = rng.random()
    if what < 0.7:  # mostly yes/no: the one-word answer is a small share of the loss otherwise
        answer = rng.choice(["yes", "no"])
        # the answer says what is there first, then yes or no (POPE's scorer reads the words before the
        # first '.'): the tiny model grounds the description in pretraining and only compares it here
        return (yes_no_question(rng, objs, answer, adversarial=rng.random() < 0.5) + SHORT_ANSWER,
                f"{shapes_caption(objs)[:-1]}, so {answer}.")
    if what < 0.8:
        c, k, _ = rng.choice(objs)
        if sum(1 for o in objs if o[1] == k) == 1:
            return f"What color is the {k}?{SHORT_ANSWER}", f"{c.capitalize()}."
    if what < 0.9:
        c, k, side = rng.choice(objs)
        return f"What shape is on the {side}?", f"A {k}."
    return "Describe the image.", shapes_caption(objs)


def _shapes_sample(rng: random.Random, kind: str, image_size: tuple[int, int]) -> tuple[Any, dict[str, Any]]:
    objs = shape_objects(rng)
    img = make_shapes_image(rng, objs, image_size)
    if kind == "caption":  # the description, then two questions about it answered from it
        qa = []
        for answer in rng.sample(["yes", "no"], 2):
            qa.append(f"{yes_no_question(rng, objs, answer, adversarial=rng.random() < 0.5)} {answer.capitalize()}.")
        return img, {"caption": " ".join([shapes_caption(objs), *qa])}
    turns = []
    for t in range(rng.randint(1, 3)):
        q, a = _shapes_turn(rng, objs)
        turns += [{"from": "human", "value": f"<image>\n{q}" if t == 0 else q}, {"from": "gpt", "value": a}]
    return img, {"conversations": turns}


def _bench_images(folder: str, bench: str, num_images: int, seed: int, image_size: tuple[int, int],
                  ) -> tuple[Any, random.Random, list[tuple[str, list[tuple[str, str, str]]]]]:
    """A bench folder's `images/` (unseen shapes images) and the rng that goes on to draw its questions."""
    from pathlib import Path

    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    rng = random.Random(f"{bench}/{seed}")
    images = []
    for i in range(num_images):
        objs = shape_objects(rng)
        name = f"shapes_{seed}_{i:05d}.png"
        make_shapes_image(rng, objs, image_size).save(root / "images" / name)
        images.append((name, objs))
    return root, rng, images


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_shapes_pope(folder: str, num_images: int = 60, seed: int = 1000, image_size: tuple[int, int] = (64, 128),
                      categories: tuple[str, ...] = ("random", "adversarial")) -> dict[str, Any]:
    """A held-out yes/no benchmark of shapes images in POPE's format, as a bench folder
    (docs/eval.md) on this machine:

        <folder>/questions.jsonl                       {"question_id", "image", "text", "category"} per line
        <folder>/annotations/coco_pope_<category>.json {"question_id", "image", "text", "label": "yes"|"no"} per line
        <folder>/images/<image>.png

    Per category and image one question whose answer is yes and one whose answer is no (so chance is
    50 %), in question-file order; `random` asks about any absent object, `adversarial` about one
    that shares the color or the shape of an object in the image. Use a seed the training data
    does not (the demo trains on seeds 0 and 1)."""
    root, rng, images = _bench_images(folder, "pope", num_images, seed, image_size)
    questions, labels = [], {c: [] for c in categories}
    qid = 0
    for category in categories:
        for name, objs in images:
            order = ["yes", "no"] if rng.random() < 0.5 else ["no", "yes"]
            for answer in order:
                text = yes_no_question(rng, objs, answer, adversarial=category == "adversarial")
                q = {"question_id": qid, "image": name, "text": text + SHORT_ANSWER, "category": category}
                questions.append(q)
                labels[category].append({"question_id": qid, "image": name, "text": text, "label": answer})
                qid += 1
    (root / "questions.jsonl").write_text(_jsonl(questions))
    for category, rows in labels.items():
        (root / "annotations" / f"coco_pope_{category}.json").write_text(_jsonl(rows))
    return {"folder": str(root), "images": num_images, "questions": len(questions), "categories": list(categories)}


def write_shapes_gqa(folder: str, num_images: int = 60, seed: int = 2000, image_size: tuple[int, int] = (64, 128),
                     ) -> dict[str, Any]:
    """A held-out short-answer benchmark of shapes images in GQA's format (scored by exact match,
    docs/eval.md), one question per image: "What color is the circle?" + the instruction LLaVA's GQA
    question file appends; the answer is the colour (4 colours: chance is 25 %).

        <folder>/questions.jsonl                                {"question_id", "image", "text"} per line
        <folder>/annotations/testdev_balanced_questions.json    {question_id: {"question", "answer"}}
        <folder>/images/<image>.png

    Use a seed the training data does not (the demo trains on seeds 0 and 1)."""
    root, _, images = _bench_images(folder, "gqa", num_images, seed, image_size)
    questions, gold = [], {}
    for qid, (name, objs) in enumerate(images):
        color, kind, _ = objs[0]
        text = f"What color is the {kind}?"
        questions.append({"question_id": str(qid), "image": name, "text": text + SHORT_ANSWER})
        gold[str(qid)] = {"question": text, "answer": color, "imageId": name}
    (root / "questions.jsonl").write_text(_jsonl(questions))
    (root / "annotations" / "testdev_balanced_questions.json").write_text(json.dumps(gold))
    return {"folder": str(root), "images": num_images, "questions": len(questions)}


def encode_image(img: Any, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=85)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=80)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def synth_sample(i: int, seed: int, kind: str, image_size: tuple[int, int],
                 text_only_every: int = 10, profile: str = "demo") -> dict[str, bytes]:
    """Sample `i` as tar parts {ext: bytes}; a pure function of (i, seed, kind, size, profile)."""
    rng = random.Random(f"{seed}/{i}")
    if profile == "shapes":  # every sample has an image: the text is about it
        img, shapes_meta = _shapes_sample(rng, kind, image_size)
        if kind == "conversation":
            shapes_meta = {"id": f"synth-{i}", **shapes_meta}
        return {"png": encode_image(img, "png"), "json": json.dumps(shapes_meta).encode()}
    text_only = text_only_every > 0 and i % text_only_every == text_only_every - 1
    parts: dict[str, bytes] = {}
    colors: list[str] | None = None
    if not text_only:
        img, colors = make_image(rng, image_size, profile)
        fmt = ("jpg", "png", "webp", "jpg")[i % 4] if profile == "demo" else "jpg"
        parts[fmt] = encode_image(img, fmt)
    n = len(colors) if colors else rng.randint(1, 3)
    if profile == "eve":
        meta = _eve_meta(rng, i, kind, text_only, colors)
    elif kind == "caption":
        meta: dict[str, Any] = {"caption": caption(rng, n, colors)}
    else:
        turns = []
        for t in range(rng.randint(1, 3)):
            if text_only:
                q = rng.choice(TEXT_QUESTIONS).format(o=rng.choice(OBJECTS), a=rng.choice(ADJECTIVES),
                                                      c=rng.choice(COLORS))
            else:
                q = rng.choice(QUESTIONS)
                q = f"<image>\n{q}" if t == 0 else q
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": caption(rng, n, colors)}]
        meta = {"id": f"synth-{i}", "conversations": turns}
    parts["json"] = json.dumps(meta).encode()
    return parts


def _eve_meta(rng: random.Random, i: int, kind: str, text_only: bool, colors: list[str] | None) -> dict[str, Any]:
    """EVE-like text lengths: captions 10-60 words (mode ~20), conversations ~50-1500 words."""
    if kind == "caption":
        return {"caption": long_text(rng, round(rng.triangular(10, 60, 20)), colors)}
    total = min(1500, max(50, round(rng.lognormvariate(5.3, 0.8))))  # median ~200 words
    n_turns = rng.randint(1, 8)
    turns = []
    for t in range(n_turns):
        q = rng.choice(QUESTIONS) if not text_only else rng.choice(TEXT_QUESTIONS).format(
            o=rng.choice(OBJECTS), a=rng.choice(ADJECTIVES), c=rng.choice(COLORS))
        if t == 0 and not text_only:
            q = f"<image>\n{q}"
        turns += [{"from": "human", "value": q},
                  {"from": "gpt", "value": long_text(rng, max(1, total // n_turns), colors)}]
    return {"id": f"synth-{i}", "conversations": turns}


def write_synthetic_dataset(url: str, num_samples: int = 300, kind: str = "caption", seed: int = 0,
                            image_size: tuple[int, int] = (64, 256), endpoint_url: str | None = None,
                            *, samples_per_shard: int = 50, shard_size: int = 256 << 20,
                            text_only_every: int = 10, profile: str = "demo") -> DatasetIndex:
    """Write `num_samples` synthetic samples as shards + index.json under `url`."""
    from eve_contract.storage import open_store
    from eve_trainer.data.errors import DataError
    from eve_trainer.data.shards import ShardWriter

    if kind not in ("caption", "conversation"):
        raise DataError(f"kind={kind!r}: choose caption or conversation")
    if num_samples < 1:
        raise DataError("num_samples must be at least 1")
    if profile not in PROFILES:
        raise DataError(f"profile={profile!r}: choose one of {', '.join(PROFILES)}")
    store = open_store(url, endpoint_url=endpoint_url)
    store.check()
    writer = ShardWriter(store, shard_size=shard_size, max_samples=samples_per_shard)
    for i in range(num_samples):
        writer.write(f"{i:09d}", synth_sample(i, seed, kind, image_size, text_only_every, profile))
    index = DatasetIndex(shards=writer.close(), kind=kind,
                         extra={"synthetic": {"seed": seed, "image_size": list(image_size), "profile": profile}})
    index.write(store)
    return index
