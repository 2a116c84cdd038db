"""`submit`, its dry run and `describe` say what each stage will train, and submit refuses a 7B
stage without a teacher or with a tokenizer that does not fit (through the CLI)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from eve_operator.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
CLIP = "s3://bkt/models/clip-vit-large-patch14-336"
VICUNA = "s3://bkt/models/vicuna-7b-v1.5"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVE_PLATFORM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # a dry run needs no kube context


def readme_7b_command() -> list[str]:
    """The README's EVE-7B `submit` command, as words (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"^(eve-platform submit stage=prealign name=eve7b preset=eve-7b .*?)(?<!\\)\n", text,
                      re.M | re.S)
    assert found, "README.md lost its EVE-7B command"
    return shlex.split(found.group(1).replace("\\\n", " "))[2:]


def submit(*words: str) -> Any:
    return runner.invoke(app, ["submit", *words, "--dry-run", "--backend", "kubernetes"])


def block(output: str, stage: str) -> str:
    start = output.index(f"stage {stage} (model.preset=")
    return output[start:output.index("length:", start)]


def test_the_readmes_7b_command_shows_the_vicuna_tokenizer_and_the_clip_teacher() -> None:
    words = readme_7b_command()
    assert f"init_from={VICUNA}" in words and f"model.teacher_path={CLIP}" in words
    result = submit(*words)
    assert result.exit_code == 0, result.output
    prealign = block(result.output, "prealign")
    assert f"LLM:           {VICUNA} (init_from)" in prealign
    assert f"tokenizer:     {VICUNA} (from init_from), vocabulary checked at start" in prealign
    assert f"teacher:       {CLIP} (model.teacher_path)" in prealign
    assert "aligning loss: on" in prealign
    assert re.search(r"LLM\s+0\s+6,738,415,616\s+-", prealign)  # frozen in prealign
    assert re.search(r"PAL\s+43,067,392\s+0\s+0\.0004", prealign)  # the vision LR
    assert "world size 32 (4 node(s) x 8), global 512, micro 16, gradient accumulation 1" in prealign
    sft = block(result.output, "sft")
    assert "tokenizer:     s3://bkt/eve/eve7b/pretrain/export (from the previous stage's export)" in sft
    assert re.search(r"LLM\s+6,738,415,616\s+0\s+2e-05", sft)
    assert re.search(r"teacher \(CLIP\)\s+0\s+303,507,456\s+-", sft)


def test_without_a_teacher_the_7b_command_is_refused_saying_how_to_fix_it() -> None:
    words = [w for w in readme_7b_command() if not w.startswith("model.teacher_path=")]
    result = submit(*words)
    assert result.exit_code == 2, result.output
    assert "stage prealign trains the patch-aligning loss" in result.output
    for fix in ("model.teacher_path=", "trainer.teacherPath", "model.align_loss=false"):
        assert fix in result.output
    assert "Traceback" not in result.output
    # the opt-out works and says so
    result = submit(*words, "model.align_loss=false")
    assert result.exit_code == 0, result.output
    prealign = block(result.output, "prealign")
    assert "aligning loss: off" in prealign and "teacher:       none" in prealign
    assert "PAL" not in prealign and "teacher (CLIP)" not in prealign
    assert "warning: stage prealign: model.align_loss=false" in result.output


def test_a_tokenizer_that_does_not_fit_is_refused_naming_both_sizes(vicuna_tokenizer: Path) -> None:
    words = readme_7b_command()
    result = submit(*words, "data.tokenizer=builtin:tiny")
    assert result.exit_code == 2, result.output
    assert "builtin:tiny has 1,024 tokens but model.preset=eve-7b has 32,000 embedding rows" in result.output
    # the real Vicuna tokenizer fits eve-7b, and its size is shown when it can be read here
    result = submit(*[w for w in words if not w.startswith("init_from=")], f"init_from={vicuna_tokenizer}")
    assert result.exit_code == 0, result.output
    assert f"tokenizer:     {vicuna_tokenizer} (from init_from), 32,000 tokens" in block(result.output, "prealign")
    result = submit("stage=pretrain", "output=s3://bkt/eve", f"data.tokenizer={vicuna_tokenizer}")
    assert result.exit_code == 2, result.output
    assert "has 32,000 tokens but model.preset=tiny has 1,024 embedding rows" in result.output


def test_tiny_says_its_teacher_is_random() -> None:
    result = submit("stage=prealign", "output=s3://bkt/eve", "gpus_per_node=2")
    assert result.exit_code == 0, result.output
    prealign = block(result.output, "prealign")
    assert "tokenizer:     builtin:tiny (the tiny preset's test tokenizer), 1,024 tokens" in prealign
    assert "teacher:       random (tiny preset" in prealign
    assert "world size 2 (1 node(s) x 2), global 8, micro 4, gradient accumulation 1" in prealign
    assert "warning: stage prealign: the CLIP teacher keeps random weights" in result.output
    # the later stages take the teacher their init export carries
    assert "teacher:       s3://bkt/eve/eve-tiny/prealign/export (carried by the previous stage's export)" in \
        block(result.output, "pretrain")


def test_the_charts_teacher_reaches_the_stage_config_and_describe() -> None:
    """trainer.teacherPath -> the operator's EVE_TEACHER_PATH -> spec.overrides of a pipeline that sets
    no teacher -> the stage's trainer config; describe shows it with its source."""
    sys.path.insert(0, str(ROOT / "tests" / "deploy"))
    from deploy_support import RELEASE, Helm, find, tool

    from eve_operator.backends.kubernetes import render_pipeline
    from eve_operator.cli.submit_args import parse_submit
    from eve_operator.defaults import OPERATOR, PIPELINE, OperatorDefaults
    from eve_operator.jobspec import resolve_stage_config
    from eve_operator.pipeline import SubmitJob

    helm, why = tool("helm")
    if helm is None:
        pytest.skip(f"helm is not available: {why}")
    objs = Helm(helm).template("--set", f"trainer.teacherPath={CLIP}")
    env = {e["name"]: e["value"] for e in find(objs, "Deployment", RELEASE)[0]["spec"]["template"]["spec"]
           ["containers"][0]["env"] if "value" in e}
    assert env["EVE_TEACHER_PATH"] == CLIP
    ops = OperatorDefaults.from_env(env)
    _, spec = parse_submit(["stage=prealign", "preset=eve-7b", f"init_from={VICUNA}", "output=s3://bkt/eve"])
    obj = render_pipeline("eve7b", None, spec)
    effective = ops.parse(obj["spec"])
    cfg = resolve_stage_config("eve7b", effective, SubmitJob("prealign", 1, "eve7b-prealign", VICUNA, None))
    assert cfg.model.teacher_path == CLIP
    # the operator refuses a pipeline it has no teacher for before any pod starts (InvalidConfig)
    from eve_trainer.config import ConfigError

    from eve_operator.jobspec import build_job_spec

    first = SubmitJob("prealign", 1, "eve7b-prealign", VICUNA, None)
    assert build_job_spec("eve7b", effective, first).stage == "prealign"
    with pytest.raises(ConfigError, match="no CLIP teacher is set"):
        build_job_spec("eve7b", OperatorDefaults.from_env({}).parse(obj["spec"]), first)
    assert ops.provenance(obj["spec"])["overrides.model.teacher_path"] == {"value": CLIP, "source": OPERATOR}
    own = {**obj["spec"], "overrides": {"model.teacher_path": "s3://mine/clip"}}
    assert ops.parse(own).overrides["model.teacher_path"] == "s3://mine/clip"
    assert ops.provenance(own)["overrides.model.teacher_path"]["source"] == PIPELINE
    off = {**obj["spec"], "overrides": {"model.align_loss": False}}
    assert "model.teacher_path" not in ops.parse(off).overrides
    on = {**obj["spec"], "overrides": {"model.align_loss": True}}
    assert ops.parse(on).overrides["model.teacher_path"] == CLIP

    from eve_operator.cli.training_block import show_for_describe

    obj["status"] = {"effective": ops.provenance(obj["spec"])}
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        show_for_describe(obj)
    assert f"teacher:       {CLIP} (model.teacher_path)" in buf.getvalue()
    assert f"tokenizer:     {VICUNA} (from init_from)" in buf.getvalue()


def test_describe_shows_the_blocks() -> None:
    from eve_operator.backends import local as lb
    from eve_operator.cli.submit_args import parse_submit

    _, spec = parse_submit(readme_7b_command())
    lb.Record(name="eve7b", spec=spec).save()
    result = runner.invoke(app, ["describe", "eve7b", "--local"])
    assert result.exit_code == 0, result.output
    assert "What will be trained:" in result.output
    assert f"teacher:       {CLIP} (model.teacher_path)" in block(result.output, "prealign")
    assert "s3://bkt/eve/eve7b/prealign/export (the previous stage's export)" in block(result.output, "pretrain")


def test_the_samples_name_their_teacher_and_take_the_llms_tokenizer() -> None:
    import yaml

    from eve_operator.cli.training_block import stage_blocks
    from eve_operator.spec import PipelineSpec

    for path in sorted((ROOT / "manifests" / "samples").glob("evepipeline-*.yaml")):
        obj = yaml.safe_load(path.read_text())
        spec = PipelineSpec.model_validate(obj["spec"])
        blocks = stage_blocks(obj["metadata"]["name"], spec)  # no ConfigError: every stage has what it needs
        assert "data.tokenizer" not in spec.overrides, path.name
        for b in blocks:
            if spec.preset != "tiny":
                assert b.tokenizer.where == b.llm.where and b.teacher.where.startswith("s3://"), (path.name, b.stage)


def test_config_show_says_where_the_tokenizer_and_teacher_come_from() -> None:
    import yaml

    result = runner.invoke(app, ["config", "show", "stage=prealign", "preset=eve-7b", f"init_from={VICUNA}",
                                 f"model.teacher_path={CLIP}"])
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.output)  # the notes are YAML comments
    assert cfg["data"]["tokenizer"] is None and cfg["model"]["teacher_path"] == CLIP
    assert f"#   tokenizer:     {VICUNA} (from init_from)" in result.output
    result = runner.invoke(app, ["config", "show", "stage=prealign", "preset=eve-7b", f"init_from={VICUNA}"])
    assert result.exit_code == 0 and "# submit would refuse this stage: stage prealign trains the patch-aligning" \
        in result.output


def test_the_block_is_torch_free() -> None:
    import subprocess

    code = ("import sys; import eve_operator.cli.training_block, eve_trainer.stage_summary; "
            "bad = [m for m in ('torch', 'transformers', 'eve_model') if m in sys.modules]; assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
