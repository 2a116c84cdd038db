"""The model the recipe names: the tokenizer comes from the LLM, a teacher is required where the
aligning loss trains, and the "what will be trained" block counts the real model's parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eve_trainer import stage_summary as S
from eve_trainer.config import STAGES, ConfigError, resolve

VICUNA = "s3://bkt/models/vicuna-7b-v1.5"
CLIP = "s3://bkt/models/clip-vit-large-patch14-336"


# -- analytic counts = eve_model's modules --------------------------------------------------------


def test_preset_dims_are_eve_models() -> None:
    from eve_model import PRESETS, get_preset

    assert set(S.PRESET_DIMS) == set(PRESETS)
    for name, dims in S.PRESET_DIMS.items():
        cfg = get_preset(name)
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "tie_word_embeddings", "mm_hidden_size", "patch_stride",
                    "align_layer_stride"):
            assert getattr(dims, key) == getattr(cfg, key), (name, key)
        clip = cfg.clip_vision_config
        assert (dims.clip_hidden_size, dims.clip_intermediate_size, dims.clip_num_hidden_layers,
                dims.clip_image_size, dims.clip_patch_size) == (
            clip["hidden_size"], clip["intermediate_size"], clip["num_hidden_layers"], clip["image_size"],
            clip["patch_size"]), name


@pytest.mark.parametrize("align_loss", [True, False])
@pytest.mark.parametrize("preset", list(S.PRESET_DIMS))
def test_analytic_counts_equal_the_real_model(preset: str, align_loss: bool) -> None:
    """Per group, per stage: trainable/frozen as set_trainable leaves them, lr as the optimizer's groups."""
    import torch
    from eve_model import EveForCausalLM, get_preset, set_trainable

    from eve_trainer.optim import param_groups

    with torch.device("meta"):
        model = EveForCausalLM(get_preset(preset, requires_cliploss=align_loss))
    real: dict[str, int] = {}
    for name, param in model.named_parameters():
        real[S.group_of(name)] = real.get(S.group_of(name), 0) + param.numel()
    analytic = S.group_params(S.PRESET_DIMS[preset], align_loss=align_loss)
    assert {k: v for k, v in analytic.items() if v} == real
    for stage in STAGES:
        cfg = resolve(stage, "tiny", {"model": {"align_loss": align_loss}})
        set_trainable(model, stage)
        summary = S.summarize(cfg.model_copy(update={"model": cfg.model.model_copy(update={"preset": preset})}),
                              world_size=1, tokenizer=S.Source("t", ""), teacher=S.Source("t", ""))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert summary.trainable == trainable and summary.frozen == sum(real.values()) - trainable, stage
        lrs = {}
        for group in param_groups(list(model.named_parameters()), cfg.optim):
            for name in group["param_names"]:
                lrs[S.group_of(name)] = group["lr"]
        assert {g.name: g.lr for g in summary.groups if g.trainable and g.params} == lrs, stage


def test_eve_7b_counts_match_the_reference_report() -> None:
    """eve-v1.md 4.3: Vicuna-7B 6,738,415,616; PEL 9,003,008; projector 20,979,712; PAL 43,067,392;
    CLIP-L/14-336 303,507,456 (their sum is the released checkpoint's 14.23 GB in bf16)."""
    counts = S.group_params(S.PRESET_DIMS["eve-7b"])
    assert counts == {"LLM": 6_738_415_616, "PEL (vision tower)": 9_003_008, "projector": 20_979_712,
                      "PAL": 43_067_392, "teacher (CLIP)": 303_507_456}


# -- tokenizer and teacher rules ------------------------------------------------------------------


def test_the_7b_tokenizer_is_the_llms_and_the_teacher_is_required() -> None:
    cfg = resolve("prealign", "eve-7b", {"init_from": VICUNA, "model": {"teacher_path": CLIP}})
    assert cfg.data.tokenizer is None
    assert S.tokenizer_source(cfg) == S.Source(VICUNA, "from init_from", None)
    assert S.teacher_source(cfg) == S.Source(CLIP, "model.teacher_path")
    assert S.check_model_meant(cfg) == []

    bare = resolve("prealign", "eve-7b", {"init_from": VICUNA})
    with pytest.raises(ConfigError) as err:
        S.check_model_meant(bare)
    for fix in ("model.teacher_path=", "trainer.teacherPath", "model.align_loss=false", "random weights"):
        assert fix in str(err.value)
    # a later stage from the previous export: the export carries both
    chained = resolve("pretrain", "eve-7b", {"init_from": "s3://bkt/eve/p/prealign/export"})
    assert S.teacher_source(chained, chained=True).how == "carried by the previous stage's export"
    assert S.tokenizer_source(chained, chained=True).how == "from the previous stage's export"
    # the opt-out says so
    off = resolve("prealign", "eve-7b", {"init_from": VICUNA, "model": {"align_loss": False}})
    assert S.teacher_source(off).where == "none"
    assert any("align_loss=false" in w for w in S.check_model_meant(off))
    assert "aligning loss: off" in S.summarize(off, world_size=32).text()


def test_tiny_keeps_its_builtin_tokenizer_and_may_train_a_random_teacher() -> None:
    cfg = resolve("prealign", "tiny")
    assert S.tokenizer_source(cfg).where == "builtin:tiny"
    warnings = S.check_model_meant(cfg)
    assert len(warnings) == 1 and "random weights" in warnings[0]


def test_a_tokenizer_that_does_not_fit_names_both_sizes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"builtin:tiny has 1,024 tokens but model.preset=eve-7b has 32,000"):
        S.check_model_meant(resolve("prealign", "eve-7b", {"init_from": VICUNA, "data": {"tokenizer": "builtin:tiny"},
                                                           "model": {"teacher_path": CLIP}}))
    with pytest.raises(ConfigError, match="no init_from to take it from"):
        S.tokenizer_source(resolve("prealign", "eve-7b"))
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {f"t{i}": i for i in range(2000)}},
                                                       "added_tokens": [{"id": 0}]}))
    assert S.known_vocab(str(folder)) == 2000
    with pytest.raises(ConfigError, match=r"has 2,000 tokens but model.preset=tiny has 1,024 embedding rows"):
        S.check_model_meant(resolve("prealign", "tiny", {"data": {"tokenizer": str(folder)}}))


# -- the real Vicuna tokenizer --------------------------------------------------------------------


def test_the_rebuilt_vicuna_tokenizer_gives_the_packages_ids(vicuna_tokenizer: Path) -> None:
    """What the trainer loads (AutoTokenizer) gives every id list llama-tokenizer-js's tests expect."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from build_llama_tokenizer import package_test_cases

    from eve_trainer.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(vicuna_tokenizer))
    assert (len(tok), tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (32000, 0, 1, 2, 0)
    cases = package_test_cases((vicuna_tokenizer / "llama-tokenizer.js").read_text(encoding="utf-8"))
    assert len(cases) >= 10
    for text, ids in cases:
        assert tok(text)["input_ids"] == ids, text[:40]
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert S.known_vocab(str(vicuna_tokenizer)) == 32000
    fits = resolve("prealign", "eve-7b", {"init_from": str(vicuna_tokenizer), "model": {"teacher_path": CLIP}})
    S.check_tokenizer_fits(fits, len(tok), str(vicuna_tokenizer))
    assert S.summarize(fits, world_size=32).tokenizer.vocab == 32000


# -- at trainer start ----------------------------------------------------------------------------


def _run_trainer(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eve_trainer", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_trainer_start_refuses_a_missing_teacher_and_a_tokenizer_too_big(tmp_path: Path, vicuna_tokenizer: Path,
                                                                          ) -> None:
    from eve_trainer.data import write_synthetic_dataset

    write_synthetic_dataset(str(tmp_path / "data"), num_samples=16, kind="caption", seed=0)
    ok = [f"data.urls=[{tmp_path / 'data'}]", f"output={tmp_path / 'out'}", "data.num_workers=0"]
    llm = tmp_path / "llm"  # a Vicuna-like folder: its config and tokenizer (the teacher check comes first)
    llm.mkdir()
    (llm / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32000}))
    procs = {
        "tokenizer": subprocess.Popen([sys.executable, "-m", "eve_trainer", "pretrain", *ok,
                                       f"data.tokenizer={vicuna_tokenizer}"], text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1")),
        "teacher": subprocess.Popen([sys.executable, "-m", "eve_trainer", "prealign", *ok, "--preset", "small",
                                     f"init_from={llm}"], text=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1")),
    }
    expect = {"tokenizer": "has 32,000 tokens but model.preset=tiny has 1,024 embedding rows",
              "teacher": "model.teacher_path="}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 2, (name, err[-2000:])
        assert expect[name] in err and "Traceback" not in err, (name, err[-2000:])


@pytest.mark.slow
def test_the_aligning_loss_off_trains_no_pal_and_the_run_says_so(tmp_path: Path, mlflow_server) -> None:
    """model.align_loss=false: no PAL and no teacher are built or exported, the align loss is 0, and the
    stage's MLflow run carries the "what will be trained" block as params and as a text artifact."""
    from mlflow.tracking import MlflowClient
    from safetensors import safe_open

    from eve_trainer.data import write_synthetic_dataset

    write_synthetic_dataset(str(tmp_path / "data"), num_samples=16, kind="caption", seed=0)
    result = _run_trainer("prealign", f"data.urls=[{tmp_path / 'data'}]", f"output={tmp_path / 'out'}",
                          "data.num_workers=0", "max_steps=2", "model.align_loss=false", "pipeline=nopal",
                          f"mlflow.tracking_uri={mlflow_server.tracking_uri}", "mlflow.experiment=model-meant",
                          "mlflow.system_metrics=false", "mlflow.register_exports=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "aligning loss: off" in result.stderr  # the block, in the rank's log
    export = tmp_path / "out/nopal/prealign/export"
    assert json.loads((export / "config.json").read_text())["requires_cliploss"] is False
    with safe_open(str(export / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "vision_tower_compressor" in k or "vision_clip" in k]

    client = MlflowClient(mlflow_server.tracking_uri)
    exp = client.get_experiment_by_name("model-meant")
    (run,) = client.search_runs([exp.experiment_id])
    params = run.data.params
    assert params["what.aligning_loss"] == "off" and params["what.teacher"].startswith("none")
    assert params["what.tokenizer"].startswith("builtin:tiny") and params["what.pal_trainable"] == "0"
    assert params["what.llm_frozen"] == params["what.frozen_params"] != "0"  # prealign: the LLM is frozen
    assert params["what.pel_lr"] == "0.002"  # the tiny prealign recipe's vision LR
    assert {m.value for m in client.get_metric_history(run.info.run_id, "train/align_loss")} == {0.0}
    text = Path(client.download_artifacts(run.info.run_id, "what_will_be_trained.txt", str(tmp_path))).read_text()
    assert "stage prealign (model.preset=tiny): what will be trained" in text and "aligning loss: off" in text
    assert "PAL" not in text
