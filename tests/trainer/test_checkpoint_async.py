"""Asynchronous checkpoints (CheckpointManager(async_save=True)) on a local store, with an engine
that saves through a DeepSpeed-style checkpoint engine; and the host copy they rest on."""

from __future__ import annotations

import pathlib
import threading

import pytest
import torch

from eve_contract import layout
from eve_contract.storage import LocalStore
from eve_trainer.checkpoint import CheckpointManager, _to_host, state_file


class TorchEngine:
    """DeepSpeed's TorchCheckpointEngine, as far as a save uses it."""

    def makedirs(self, path, exist_ok=False):
        pathlib.Path(path).mkdir(parents=True, exist_ok=exist_ok)

    def save(self, state_dict, path):
        torch.save(state_dict, path)

    def load(self, path, map_location=None):
        return torch.load(path, map_location=map_location, weights_only=False)


class DSLikeEngine:
    """Saves like deepspeed.DeepSpeedEngine.save_checkpoint: every file through `checkpoint_engine`."""

    def __init__(self, value: float):
        self.weights = torch.full((1000,), value)
        self.moments = {"exp_avg": torch.full((1000,), value / 2)}
        self.checkpoint_engine = TorchEngine()

    def save_checkpoint(self, save_dir, tag, client_state):
        path = pathlib.Path(save_dir, tag)
        self.checkpoint_engine.makedirs(path, exist_ok=True)
        self.checkpoint_engine.save({"module": {"w": self.weights}, **client_state}, str(path / "mp_rank_00_model_states.pt"))
        self.checkpoint_engine.save({"optimizer": self.moments, "view": self.weights[:10]},
                                    str(path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"))

    def load_checkpoint(self, load_dir, tag):
        state = self.checkpoint_engine.load(str(pathlib.Path(load_dir, tag, "mp_rank_00_model_states.pt")))
        self.weights = state["module"]["w"]
        return load_dir, state


class SlowStore(LocalStore):
    """Uploads wait for `release`, so a test can look at a save in flight."""

    def __init__(self, root):
        super().__init__(root)
        self.release = threading.Event()

    def upload_file(self, path, key):
        assert self.release.wait(60)
        return super().upload_file(path, key)


def manager(store, **kw) -> CheckpointManager:
    return CheckpointManager(store, pipeline="p", stage="sft", rank=0, world_size=1, every_steps=3, keep_last=2,
                             config_json="{}", config_hash="h", async_save=True, **kw)


def test_async_save_blocks_only_for_the_copy_and_commits_the_manifest_last(tmp_path):
    store = SlowStore(tmp_path)
    ckpt = manager(store)
    engine = DSLikeEngine(3.0)
    assert ckpt.save(3, engine, {"step": 3, "loader": {"pos": 3}}, "run-1") is None  # returns before the upload
    assert ckpt.in_flight == 3 and ckpt.poll() == []
    assert engine.checkpoint_engine.__class__ is TorchEngine  # DeepSpeed's own engine is back in place
    # training goes on: the live tensors change in place while the save is in flight
    engine.weights.fill_(99.0)
    engine.moments["exp_avg"].fill_(99.0)
    assert layout.list_checkpoint_steps(store, "p", "sft") == []  # no manifest yet: it does not count
    store.release.set()
    (manifest,) = ckpt.wait()
    assert manifest.step == 3 and manifest.mlflow_run_id == "run-1" and ckpt.last_save_s >= ckpt.last_blocking_s
    assert {f.path for f in manifest.files} == {"ds/mp_rank_00_model_states.pt",
                                                "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                                state_file(0), "config.json"}
    assert layout.latest_complete_checkpoint(store, "p", "sft")[0] == 3  # every sha256 verifies

    restored_engine = DSLikeEngine(0.0)
    restored = manager(store).load(restored_engine)
    assert restored.step == 3 and restored.trainer_state["loader"] == {"pos": 3}
    assert float(restored_engine.weights[0]) == 3.0  # the state as it was at the save, not 99


def test_at_most_one_save_in_flight_and_poll_collects_it(tmp_path):
    store = SlowStore(tmp_path)
    ckpt = manager(store)
    ckpt.save(3, DSLikeEngine(3.0), {"step": 3}, None)
    done = threading.Event()

    def second():
        ckpt.save(6, DSLikeEngine(6.0), {"step": 6}, None)  # waits for step 3 to commit first
        done.set()

    t = threading.Thread(target=second)
    t.start()
    assert not done.wait(0.5)
    assert layout.list_checkpoint_steps(store, "p", "sft") == []
    store.release.set()
    t.join(60)
    assert done.is_set() and layout.list_checkpoint_steps(store, "p", "sft") in ([3], [6, 3])
    # step 3's manifest, collected by the second save's wait, still reaches the caller
    assert [m.step for m in ckpt.wait()] == [3, 6]
    assert layout.list_checkpoint_steps(store, "p", "sft") == [6, 3]
    assert ckpt.poll() == [] and not ckpt.pending


def test_a_failed_background_save_raises_on_the_training_thread_and_commits_nothing(tmp_path):
    class Broken(LocalStore):
        def upload_file(self, path, key):
            raise OSError("disk full")

    store = Broken(tmp_path)
    ckpt = manager(store)
    ckpt.save(3, DSLikeEngine(3.0), {"step": 3}, None)
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.wait()
    assert layout.list_checkpoint_steps(store, "p", "sft") == []


def test_host_copy_is_independent_and_keeps_structure():
    shared = torch.arange(6.0)
    state = {"a": shared, "b": [shared, (1, "x")], "view": shared[2:4], "n": 5}
    copy = _to_host(state, {})
    shared.fill_(-1)
    assert copy["a"].tolist() == [0, 1, 2, 3, 4, 5] and copy["b"][0] is copy["a"]  # one copy per tensor
    assert copy["view"].tolist() == [2, 3] and copy["view"].untyped_storage().nbytes() == 2 * 4  # compact
    assert copy["b"][1] == (1, "x") and copy["n"] == 5


def test_interval_advice_counts_the_nodes_and_warns_far_from_the_optimum():
    from eve_trainer.checkpoint import interval_advice

    # 4 nodes of 8 ranks, 1000 node-hours each: the job fails every 250 h; a save blocks 2 s, a step 1 s
    advice = interval_advice(every_steps=100, mtbf_node_hours=1000, world_size=32, steps=50, step_time_s=50.0,
                             save_blocking_s=2.0, env={"PET_NNODES": "4"})
    assert advice.optimal_steps == round((2 * 2.0 * 250 * 3600) ** 0.5) == 1897 and advice.far
    same = interval_advice(every_steps=100, mtbf_node_hours=1000, world_size=32, steps=50, step_time_s=50.0,
                           save_blocking_s=2.0, env={"LOCAL_WORLD_SIZE": "8"})
    assert same.mtbf_s == advice.mtbf_s == 250 * 3600
    assert interval_advice(every_steps=3, mtbf_node_hours=0, world_size=1, steps=3, step_time_s=1,
                           save_blocking_s=1, env={}) is None
