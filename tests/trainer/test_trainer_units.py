"""Fast unit tests of the trainer's pure parts: recipes, batch split, LR schedule, LR groups,
DeepSpeed config, rank env, FLOPs, and the checkpoint manager on a local store."""

from __future__ import annotations

import math

import pytest
import torch

from eve_contract import layout
from eve_contract.storage import LocalStore
from eve_trainer.checkpoint import CheckpointManager, state_file
from eve_trainer.config import ConfigError, resolve
from eve_trainer.distributed import DistInfo
from eve_trainer.metrics import BaseLogger, build_logger, flatten
from eve_trainer.optim import deepspeed_config, lr_multiplier, param_groups, warmup_steps

# -- recipes (eve-v1.md section 5) ------------------------------------------------------------


@pytest.mark.parametrize("stage,lr,vision_lr,warmup,batch,micro,max_len,template", [
    ("prealign", 4e-5, 4e-4, 0.03, 512, 16, 2048, "plain"),
    ("pretrain", 4e-5, None, 0.01, 512, 16, 2048, "plain"),
    ("sft", 2e-5, None, 0.01, 128, 4, 2048, "vicuna_v1"),
    ("sft-hd", 2e-5, None, 0.01, 128, 2, 4096, "vicuna_v1"),
])
def test_eve7b_recipes_match_the_reference(stage, lr, vision_lr, warmup, batch, micro, max_len, template):
    cfg = resolve(stage, "eve-7b")
    assert (cfg.optim.lr, cfg.optim.vision_lr, cfg.optim.warmup_ratio) == (lr, vision_lr, warmup)
    assert (cfg.global_batch_size, cfg.micro_batch_size) == (batch, micro)
    assert (cfg.data.max_length, cfg.data.template) == (max_len, template)
    assert cfg.optim.weight_decay == 0 and cfg.optim.schedule == "cosine"
    assert cfg.deepspeed.zero_stage == 3 and cfg.model.gradient_checkpointing
    assert cfg.model.preset == ("eve-7b-hd" if stage == "sft-hd" else "eve-7b")
    # 32 GPUs as in the reference scripts: 16x1x32, 4x1x32, and 2x2x32 for HD
    assert cfg.gradient_accumulation(32) == (2 if stage == "sft-hd" else 1)


def test_gradient_accumulation_and_indivisible_batch():
    cfg = resolve("pretrain", "eve-7b")
    assert cfg.gradient_accumulation(8) == 4  # 512 / (8 x 16)
    with pytest.raises(ConfigError, match="global_batch_size=512 is not divisible.*3 x 16"):
        cfg.gradient_accumulation(3)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="optim.lr"):
        resolve("sft", "tiny", ["optim.lrr=1"])


# -- optimizer pieces ---------------------------------------------------------------------


def test_lr_schedule_is_warmup_then_cosine_and_pure():
    total, warm = 100, warmup_steps(100, 0.03)
    assert warm == 3
    values = [lr_multiplier(s, total_steps=total, num_warmup=warm) for s in range(total)]
    assert values[:4] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert all(a >= b for a, b in zip(values[3:], values[4:]))  # monotone decay after warmup
    assert values[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 96 / 97)))
    assert lr_multiplier(50, total_steps=100, num_warmup=0, schedule="constant") == 1.0


def test_scheduler_state_restores_the_same_lr():
    from eve_trainer.optim import build_scheduler

    cfg = resolve("pretrain", "tiny")
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt_a = torch.optim.AdamW(params, lr=cfg.optim.lr)
    sched_a = build_scheduler(opt_a, cfg.optim, total_steps=20)
    for _ in range(7):
        opt_a.step()
        sched_a.step()
    opt_b = torch.optim.AdamW(params, lr=cfg.optim.lr)
    sched_b = build_scheduler(opt_b, cfg.optim, total_steps=20)
    sched_b.load_state_dict(sched_a.state_dict())
    assert sched_b.get_last_lr() == sched_a.get_last_lr()
    sched_a.step()
    sched_b.step()
    assert sched_b.get_last_lr() == sched_a.get_last_lr()


def test_param_groups_put_vision_tower_and_projector_at_vision_lr():
    cfg = resolve("prealign", "eve-7b")
    named = [(n, torch.nn.Parameter(torch.zeros(1))) for n in
             ("model.layers.0.mlp.up_proj.weight", "model.vision_tower.patch_embedding.weight",
              "model.vision_tower_compressor.q.weight", "model.mm_projector.0.weight",
              "model.vision_clip.encoder.weight")]
    named[-1][1].requires_grad_(False)  # the teacher is frozen
    groups = {g["name"]: g for g in param_groups(named, cfg.optim)}
    assert groups["base"]["lr"] == 4e-5 and groups["base"]["param_names"] == ["model.layers.0.mlp.up_proj.weight"]
    assert groups["vision"]["lr"] == 4e-4 and len(groups["vision"]["params"]) == 3


def test_deepspeed_config_from_the_section():
    cfg = resolve("sft-hd", "eve-7b")
    ds = deepspeed_config(cfg, world_size=32, bf16=True, cuda=True)
    sizes = (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"])
    assert sizes == (128, 2, 2)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    tiny = deepspeed_config(resolve("pretrain", "tiny"), world_size=2, bf16=False, cuda=False)
    assert tiny["zero_optimization"] == {"stage": 2, "overlap_comm": False, "contiguous_gradients": True,
                                         "reduce_bucket_size": int(5e8), "allgather_bucket_size": int(5e8)}


# -- environment, flops, metrics --------------------------------------------------------------


def test_rank_from_torchrun_and_pytorchjob_env():
    assert DistInfo.from_env({}) == DistInfo(0, 1, 0)
    assert DistInfo.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistInfo(3, 4, 1)
    pet = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "4", "PET_NODE_RANK": "1", "LOCAL_RANK": "2"}
    assert DistInfo.from_env(pet) == DistInfo(6, 8, 2)
    with pytest.raises(ConfigError, match="elastic range"):  # the launcher's rule (eve_contract.topology)
        DistInfo.from_env({**pet, "PET_NNODES": "1:2"})
    with pytest.raises(ConfigError, match="RANK=4"):
        DistInfo.from_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_null_logger_and_flatten():
    assert isinstance(build_logger(tracking_uri=None, is_main=True), BaseLogger)
    assert isinstance(build_logger(tracking_uri="http://x", is_main=False), BaseLogger)
    assert flatten({"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "stage": "sft"}) == {
        "optim.lr": "0.001", "optim.betas": "[0.9, 0.99]", "stage": "sft"}


# -- checkpoint manager on a local store, with a hand-written engine --------------------------


class FakeEngine:
    """Stands in for a DeepSpeed engine: one tensor of 'weights' saved under the tag."""

    def __init__(self, value: float):
        self.weights = torch.full((1000,), value)

    def save_checkpoint(self, save_dir, tag, client_state):
        import pathlib

        path = pathlib.Path(save_dir, tag)
        path.mkdir(parents=True)
        torch.save({"w": self.weights, **client_state}, path / "mp_rank_00_model_states.pt")

    def load_checkpoint(self, load_dir, tag):
        import pathlib

        state = torch.load(pathlib.Path(load_dir, tag, "mp_rank_00_model_states.pt"))
        self.weights = state["w"]
        return load_dir, state


def _manager(store, keep_last=2):
    return CheckpointManager(store, pipeline="p", stage="sft", rank=0, world_size=1, every_steps=3,
                             keep_last=keep_last, config_json="{}", config_hash="h")


def test_checkpoint_save_prune_and_fallback_on_sha_mismatch(tmp_path):
    store = LocalStore(tmp_path)
    manager = _manager(store)
    for step in (3, 6, 9):
        manifest = manager.save(step, FakeEngine(float(step)), {"step": step, "loader": {"pos": step}}, "run-1")
        assert manifest.step == step and manifest.mlflow_run_id == "run-1"
    # keep_last=2: step-3 was pruned once step-9 committed
    assert layout.list_checkpoint_steps(store, "p", "sft") == [9, 6]
    files = {f.path for f in manifest.files}
    assert files == {"ds/mp_rank_00_model_states.pt", state_file(0), "config.json"}

    # same-size corruption: only the sha256 can tell
    victim = tmp_path / layout.checkpoint_prefix("p", "sft", 9) / "ds/mp_rank_00_model_states.pt"
    blob = bytearray(victim.read_bytes())
    blob[-20] ^= 0xFF
    victim.write_bytes(bytes(blob))
    engine = FakeEngine(0.0)
    restored = _manager(store).load(engine)
    assert restored.step == 6 and restored.trainer_state["loader"] == {"pos": 6}
    assert float(engine.weights[0]) == 6.0


def test_checkpoint_without_manifest_is_ignored(tmp_path):
    store = LocalStore(tmp_path)
    _manager(store).save(3, FakeEngine(3.0), {"step": 3}, None)
    store.put_bytes(layout.checkpoint_prefix("p", "sft", 6) + "/ds/partial.pt", b"half")  # crashed mid-save
    assert _manager(store).load(FakeEngine(0.0)).step == 3
    assert _manager(LocalStore(tmp_path / "empty")).load(FakeEngine(0.0)) is None


def test_progress_json_lines_and_plain_lines():
    import io
    import json

    from eve_trainer.progress import Progress

    out = io.StringIO()
    p = Progress("json", total_steps=4, stream=out)
    p.event("start", "starting", step=0)
    p.start(0)
    p.step(1, {"loss": 1.25, "samples_per_s": 3.0})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"event": "start", "message": "starting", "step": 0}
    assert lines[1]["event"] == "step" and lines[1]["loss"] == 1.25 and lines[1]["total_steps"] == 4
    plain = io.StringIO()
    p = Progress("auto", total_steps=4, stream=plain)  # not a tty: plain lines
    p.event("start", "starting")
    p.start(0)
    p.step(2, {"loss": 0.5, "lr": 1e-3, "samples_per_s": 8.0})
    assert plain.getvalue().splitlines()[1].startswith("[eve-train] step 2/4 loss 0.5000")
    assert Progress("json", total_steps=1, enabled=False, stream=io.StringIO()).mode == "none"


def test_cli_config_file_then_overrides(tmp_path):
    from eve_trainer.main import load_config, parse_args

    path = tmp_path / "run.yaml"
    path.write_text("model: {preset: eve-7b}\noptim: {lr: 1.0e-5, warmup_ratio: 0.05}\nmax_steps: 10\n")
    cfg = load_config(parse_args(["--config", str(path), "sft", "optim.lr=3e-5"]))
    assert cfg.model.preset == "eve-7b" and cfg.global_batch_size == 128  # the 7B recipe, from the file's preset
    assert (cfg.optim.lr, cfg.optim.warmup_ratio, cfg.max_steps) == (3e-5, 0.05, 10)  # file < overrides
    path.write_text("optim: {lrr: 1}\n")
    with pytest.raises(ConfigError, match="unknown config key .optim.lrr. in .*did you mean optim.lr"):
        load_config(parse_args(["--config", str(path), "sft"]))


def test_a_rank_downloads_only_its_own_partitions_on_resume() -> None:
    from eve_trainer.checkpoint import needed_by_rank, state_file

    files = ["ds/mp_rank_00_model_states.pt", "ds/latest",
             "ds/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
             "ds/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
             "ds/zero_pp_rank_1_mp_rank_00_model_states.pt",
             "ds/zero_pp_rank_11_mp_rank_00_model_states.pt",
             state_file(0), state_file(1), "config.json"]
    assert [f for f in files if needed_by_rank(f, 1)] == [
        "ds/mp_rank_00_model_states.pt", "ds/latest",
        "ds/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "ds/zero_pp_rank_1_mp_rank_00_model_states.pt", state_file(1), "config.json"]
