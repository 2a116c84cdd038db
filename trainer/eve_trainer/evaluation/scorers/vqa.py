"""VQA-style accuracy with the EvalAI answer normalisation (eve/eval/m4c_evaluator.py) and TextVQA.

The normaliser reproduces the reference's EvalAIAnswerProcessor exactly, quirks included:
- `PERIOD_STRIP` is `(?!<=\\d)(\\.)(?!\\d)`: as written (a typo of a look-behind) it removes
  every "." not followed by a digit ("1.5" keeps its dot, "3." loses it);
- that substitution is called as `sub("", text, re.UNICODE)`, which passes 32 as the *count*:
  at most the first 32 such dots are removed;
- punctuation is deleted outright when the text has "p " or " p" or a digit,digit comma,
  otherwise replaced by a space.
Soft accuracy (TextVQA/VQAv2): over the 10 human answers, for each one left out, min(1, matches
among the other 9 / 3); averaged over the 10.
"""

from __future__ import annotations

import re
from typing import Any

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
PUNCTUATIONS = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!"]


def _word_tokenize(word: str) -> str:
    word = word.lower()
    word = word.replace(",", "").replace("?", "").replace("'s", " 's")
    return word.strip()


def _process_punctuation(in_text: str) -> str:
    out_text = in_text
    for p in PUNCTUATIONS:
        if (p + " " in in_text or " " + p in in_text) or (re.search(COMMA_STRIP, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return PERIOD_STRIP.sub("", out_text, re.UNICODE)  # the reference's call: count = re.UNICODE (32)


def _process_digit_article(in_text: str) -> str:
    words = [NUMBER_MAP.get(w, w) for w in in_text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalise(answer: str) -> str:
    """EvalAIAnswerProcessor: lower case, punctuation rules, number words to digits, no articles,
    contractions restored."""
    item = _word_tokenize(answer)
    item = item.replace("\n", " ").replace("\t", " ").strip()
    item = _process_punctuation(item)
    return _process_digit_article(item)


def soft_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """The VQA accuracy of one prediction against its human answers (normally 10)."""
    if not gt_answers:
        raise ValueError("soft accuracy needs the human answers; got none")
    pred = normalise(prediction)
    answers = [normalise(a) for a in gt_answers]
    accs = []
    for left_out in range(len(answers)):
        others = answers[:left_out] + answers[left_out + 1:]
        accs.append(min(1.0, sum(1 for a in others if a == pred) / 3))
    return sum(accs) / len(accs)


def textvqa_question(prompt: str) -> str:
    """The question inside an answer line's prompt, lower-cased (eval_textvqa.prompt_processor)."""
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match is None:
            raise ValueError(f"prompt starts with 'OCR tokens: ' but has no 'Question: ... Short answer:': "
                             f"{prompt[:120]!r}")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(prompt.split("\n")) == 3:
        lines = prompt.split("\n")
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(prompt.split("\n")) == 2:
        question = prompt.split("\n")[0]
    else:
        raise ValueError(f"cannot find the question in prompt {prompt[:120]!r}: expected 'question\\ninstruction', "
                         "an 'OCR tokens: ... Question: ... Short answer:' or a 'Reference OCR token:' prompt")
    return question.lower()


def score_textvqa(answers: list[dict[str, Any]], annotations: dict[str, Any]) -> dict[str, float]:
    """answers: the merged answer lines; annotations: TextVQA_0.5.1_val.json ({"data": [...]}),
    matched by (image_id, question lower-cased) with the question taken back out of `prompt`."""
    index = {(a["image_id"], a["question"].lower()): a for a in annotations["data"]}
    scores = []
    for ans in answers:
        key = (ans["question_id"], textvqa_question(ans["prompt"]))
        if key not in index:
            raise KeyError(f"answer {ans['question_id']!r}: no annotation for image_id={key[0]!r}, "
                           f"question={key[1]!r} in the TextVQA annotation file")
        scores.append(soft_accuracy(ans["text"], index[key]["answers"]))
    return {"accuracy": sum(scores) / len(scores) if scores else 0.0, "n": len(scores)}


def score_vqa(answers: list[dict[str, Any]], gt: dict[Any, list[str]]) -> dict[str, float]:
    """VQA soft accuracy where the human answers are known: gt {question_id: [answers]}; questions
    without human answers are not counted."""
    scores = [soft_accuracy(a["text"], gt[a["question_id"]]) for a in answers if gt.get(a["question_id"])]
    return {"accuracy": sum(scores) / len(scores) if scores else 0.0, "n": len(scores)}
