import os

import pytest
import torch

from captionkit import threads


def test_cgroup_quota_is_read_and_caps_the_cpus(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(cpu_max) == 1.5
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert threads.available_cpus(cpu_max) == 1  # 1.5 CPUs of quota: one whole thread
    cpu_max.write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(cpu_max) is None
    assert threads.available_cpus(cpu_max) == 4  # the affinity mask
    assert threads.available_cpus(tmp_path / "absent") == 4


def test_default_threads_honours_omp_num_threads():
    assert threads.default_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert threads.default_threads({"OMP_NUM_THREADS": "0"}) == threads.available_cpus()
    assert threads.default_threads({"OMP_NUM_THREADS": "many"}) == threads.available_cpus()
    assert threads.default_threads({}) == threads.available_cpus()


def test_passive_waiting_is_a_default_the_user_can_override():
    env = {}
    threads.prefer_passive_waiting(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.prefer_passive_waiting(mine)
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_configure_threads_sets_torch_and_refuses_zero():
    before = torch.get_num_threads()
    try:
        assert threads.configure_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="at least 1"):
            threads.configure_threads(0)
    finally:
        torch.set_num_threads(before)
