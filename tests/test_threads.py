"""Torch threads for a training process on a shared machine: the pure rule with fake load, affinity and environment."""

from __future__ import annotations

import pytest
import torch

from dcclip.config import OptimConfig, TrainConfig
from dcclip.engine import loop as engine_loop
from dcclip.engine import threads as engine_threads
from dcclip.engine.distributed import DistEnv
from dcclip.engine.threads import LoadSample, busy_cores, choose_threads, parse_loadavg

QUIET = LoadSample(load1=0.1, running=1)  # only the reader itself runs
ONE_JOB = LoadSample(load1=1.9, running=2)  # another CPU-bound process besides us


def test_a_quiet_machine_gets_every_usable_core():
    assert choose_threads("auto", {}, cores=8, machine_cores=8, load=QUIET).threads == 8


def test_a_competing_job_takes_its_core():
    choice = choose_threads("auto", {}, cores=2, machine_cores=2, load=ONE_JOB)
    assert choice.threads == 1 and choice.busy == 1.0 and "busy" in choice.reason


def test_never_below_one_thread():
    assert choose_threads("auto", {}, cores=2, machine_cores=2, load=LoadSample(9.0, 12)).threads == 1


def test_our_own_recent_load_is_not_counted_as_other_work():
    # 1-minute load of 1.0 from this process's own start-up, nothing else runnable now
    assert choose_threads("auto", {}, cores=4, machine_cores=4, load=LoadSample(1.0, 1)).threads == 4


def test_load_is_scaled_to_the_cores_this_process_may_use():
    # 4 busy cores out of 16; we may use 8 of them: about 2 of ours are taken
    assert busy_cores(LoadSample(4.0, 5), cores=8, machine_cores=16) == 2.0
    assert choose_threads("auto", {}, cores=8, machine_cores=16, load=LoadSample(4.0, 5)).threads == 6


def test_torchrun_splits_the_cores_over_local_ranks():
    env = {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}  # 1 is what torchrun sets when the user did not
    assert choose_threads("auto", env, cores=8, machine_cores=8, load=ONE_JOB).threads == 4
    assert choose_threads("auto", {"LOCAL_WORLD_SIZE": "4"}, cores=2, machine_cores=2, load=None).threads == 1


def test_the_user_setting_wins():
    assert choose_threads("3", {"OMP_NUM_THREADS": "5"}, cores=8, machine_cores=8, load=ONE_JOB).threads == 3
    omp = choose_threads("auto", {"OMP_NUM_THREADS": "5"}, cores=8, machine_cores=8, load=ONE_JOB)
    assert omp.threads == 5 and omp.reason == "OMP_NUM_THREADS"
    assert choose_threads("auto", {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "3"}, 8, 8, None).threads == 3


@pytest.mark.parametrize("bad", ["0", "-1", "many"])
def test_bad_settings_name_their_source(bad):
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        choose_threads("auto", {"OMP_NUM_THREADS": bad}, cores=2, machine_cores=2, load=QUIET)
    with pytest.raises(ValueError, match=r"train\.threads"):
        choose_threads(bad, {}, cores=2, machine_cores=2, load=QUIET)


def test_loadavg_parsing():
    assert parse_loadavg("0.52 0.40 0.33 2/345 6789\n") == LoadSample(0.52, 2)
    with pytest.raises(ValueError, match="loadavg"):
        parse_loadavg("garbage")
    assert choose_threads("auto", {}, cores=3, machine_cores=3, load=None).threads == 3


class OneWeightTask(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.student = torch.nn.Linear(2, 1)
        self.seen_threads: list[int] = []

    def forward(self, batch):
        self.seen_threads.append(torch.get_num_threads())
        return {"loss": self.student(batch["x"]).square().mean()}


class TwoBatches:
    def __iter__(self):
        for _ in range(2):
            yield {"keys": ["a", "b"], "x": torch.ones(2, 2)}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_the_train_loop_applies_the_choice_and_puts_threads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_threads, "read_load", lambda: LoadSample(0.0, 1))
    monkeypatch.setattr(engine_threads, "usable_cores", lambda: 3)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    spec = engine_loop.FitSpec(
        run_dir=tmp_path,
        train=TrainConfig(out_dir=str(tmp_path), steps=2, log_every=1, ckpt_every=2, threads="auto"),
        optim=OptimConfig(lr=1e-2, warmup_steps=1),
        checkpoint_config={"stage": "test"},
    )
    task = OneWeightTask()
    before = torch.get_num_threads()
    result = engine_loop.fit(task, TwoBatches(), spec, DistEnv())
    assert task.seen_threads == [3, 3] and result.threads["threads"] == 3
    assert torch.get_num_threads() == before
