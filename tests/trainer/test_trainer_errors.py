"""Bad input fails before the first step with exit code 2 and a message that names the key
or URL, without a stack trace. (Transient failures, exit 1: test_failure_classes.py.) Each case is one `python -m eve_trainer` process (run in parallel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _run_all(cases: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, subprocess.CompletedProcess]:
    procs = {}
    for name, (args, env) in cases.items():
        procs[name] = subprocess.Popen([sys.executable, "-m", "eve_trainer", *args], text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       env=dict(os.environ, OMP_NUM_THREADS="1", **env))
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def test_bad_input_exits_2_naming_the_key_or_url(tmp_path, s3_server):
    data = tmp_path / "data"
    from eve_trainer.data import write_synthetic_dataset

    write_synthetic_dataset(str(data), num_samples=16, kind="caption", seed=0)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    wide = tmp_path / "wide-eve"
    wide.mkdir()
    (wide / "config.json").write_text(json.dumps({"model_type": "eve", "hidden_size": 128}))
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    ok = [f"data.urls=[{data}]", f"output={tmp_path / 'out'}"]
    s3 = {k: v for k, v in s3_server.env().items()}
    cases = {
        "stage": (["pretrian", *ok], {}),
        "key": (["sft", "optim.lrr=1e-4", *ok], {}),
        "batch": (["sft", "global_batch_size=10", *ok], {"RANK": "0", "WORLD_SIZE": "2"}),
        "bert": (["pretrain", f"init_from={bert}", *ok], {}),
        "wide": (["sft", f"init_from={wide}", *ok], {}),
        "llama_for_sft": (["sft", f"init_from={llama}", *ok], {}),
        "no_bucket": (["sft", f"data.urls=[{data}]", "output=s3://no-such-bucket/runs"], s3),
        "no_data": (["sft", f"data.urls=[{tmp_path / 'nothing'}]", f"output={tmp_path / 'out'}"], {}),
    }
    expect = {
        "stage": "unknown stage 'pretrian'",
        "key": "unknown config key 'optim.lrr'; did you mean optim.lr",
        "batch": "global_batch_size=10 is not divisible",
        "bert": f"init_from='{bert}' is a 'bert' model",
        "wide": "hidden_size=128",
        "llama_for_sft": f"init_from='{llama}' is a plain llama model",
        "no_bucket": "bucket of s3://no-such-bucket/runs does not exist",
        "no_data": str(tmp_path / "nothing"),
    }
    results = _run_all(cases)
    for name, result in results.items():
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert expect[name] in result.stderr, (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (name, result.stderr[-2000:])
