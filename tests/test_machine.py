"""The machine probe: precision `auto` decided by measurement, cores from affinity and cgroup quota."""

from __future__ import annotations

import json

import pytest

from posinterp import machine
from posinterp.errors import PosinterpError


def _fake_probe(monkeypatch, bf16: float, fp32: float) -> None:
    result = {"bf16_tflops": bf16, "fp32_tflops": fp32, "speedup": bf16 / fp32, "probe_n": 1024,
              "capability": "FAKE", "threads": 2, "cached": False}
    monkeypatch.setattr(machine, "probe", lambda refresh=False: result)


def test_auto_picks_bf16_where_it_is_measured_fast(monkeypatch):
    _fake_probe(monkeypatch, bf16=1.9, fp32=0.33)  # AMX: 5.7x
    choice = machine.choose_precision("auto", "cpu")
    assert choice.name == "bf16" and "5.76×" in choice.reason and choice.probe["speedup"] > 5


def test_auto_picks_fp32_where_bf16_is_slow(monkeypatch):
    _fake_probe(monkeypatch, bf16=0.0003, fp32=0.09)  # AVX2 only: the generic bf16 kernel
    choice = machine.choose_precision("auto", "cpu")
    assert choice.name == "fp32" and "not ≥ 1.25× faster" in choice.reason


def test_auto_needs_a_real_gain_not_a_tie(monkeypatch):
    _fake_probe(monkeypatch, bf16=0.11, fp32=0.10)
    assert machine.choose_precision("auto", "cpu").name == "fp32"
    _fake_probe(monkeypatch, bf16=0.13, fp32=0.10)
    assert machine.choose_precision("auto", "cpu").name == "bf16"


@pytest.mark.parametrize("bf16_ok, capability, expected", [(True, (9, 0), "bf16"), (False, (7, 5), "fp16"),
                                                            (False, (5, 2), "fp32")])
def test_auto_on_cuda_follows_the_device(monkeypatch, bf16_ok, capability, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "FakeGPU")
    monkeypatch.setattr(machine, "probe", lambda refresh=False: pytest.fail("no CPU probe on a GPU"))
    choice = machine.choose_precision("auto", "cuda")
    assert choice.name == expected and "FakeGPU" in choice.reason


def test_explicit_precision_wins_without_probing(monkeypatch):
    monkeypatch.setattr(machine, "probe", lambda refresh=False: pytest.fail("an explicit choice needs no probe"))
    assert machine.choose_precision("float32", "cpu").name == "fp32"
    assert machine.choose_precision("bf16", "cpu", "--dtype").reason == "--dtype bf16"


def test_bad_names_are_refused_naming_the_flag():
    with pytest.raises(PosinterpError, match="--dtype 'int8'"):
        machine.normalize("int8", "--dtype")


def test_probe_measures_both_dtypes_and_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path))
    monkeypatch.delenv(machine.PROBE_CACHE_ENV, raising=False)
    calls = []
    real = machine._measure
    monkeypatch.setattr(machine, "_measure", lambda: calls.append(1) or real())
    first = machine.probe()
    assert first["bf16_tflops"] > 0 and first["fp32_tflops"] > 0 and not first["cached"]
    second = machine.probe()
    assert second["cached"] and second["bf16_tflops"] == first["bf16_tflops"] and len(calls) == 1
    (saved,) = json.loads((tmp_path / "machine-probe.json").read_text())["entries"]
    assert saved["key"]["torch"] and saved["result"]["speedup"] == first["speedup"]
    machine.probe(refresh=True)
    assert len(calls) == 2


def test_the_suite_never_writes_the_users_probe_cache(monkeypatch, tmp_path):
    import os

    from posinterp.cache import cache_dir

    assert os.environ.get(machine.PROBE_CACHE_ENV)  # set by conftest for the whole suite (subprocesses too)
    assert machine.probe_cache_path() != cache_dir() / "machine-probe.json"
    monkeypatch.setenv(machine.PROBE_CACHE_ENV, str(tmp_path / "p.json"))
    assert machine.probe_cache_path() == tmp_path / "p.json"


def test_a_capped_onednn_is_probed_as_another_machine(monkeypatch, tmp_path):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes bf16 as slow as on an AVX2-only CPU: the cached fast answer must not apply."""
    monkeypatch.setenv(machine.PROBE_CACHE_ENV, str(tmp_path / "probe.json"))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    answers = iter([{"bf16_tflops": 1.0, "fp32_tflops": 0.2, "speedup": 5.0, "probe_n": 8},
                    {"bf16_tflops": 0.001, "fp32_tflops": 0.2, "speedup": 0.005, "probe_n": 8}])
    monkeypatch.setattr(machine, "_measure", lambda: next(answers))
    assert machine.probe()["speedup"] == 5.0 and "onednn_max_isa" not in machine.cpu_key()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = machine.probe()
    assert not capped["cached"] and capped["speedup"] == 0.005 and capped["onednn_max_isa"] == "AVX2"
    assert machine.choose_precision("auto").name == "fp32"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")  # both answers are kept: neither evicts the other
    assert machine.probe()["cached"] and machine.probe()["speedup"] == 5.0


def test_a_busy_machine_is_measured_not_called_slow(monkeypatch):
    """Every first call slow (other work on the CPU): bf16 is measured properly, not taken for the fallback."""
    monkeypatch.setattr(machine, "_first_call_s", lambda dtype: 0.5)
    measured = []
    monkeypatch.setattr(machine, "matmul_tflops", lambda dtype, **k: measured.append(str(dtype)) or 0.2)
    machine._measure()
    assert measured == ["torch.float32", "torch.bfloat16"]


def test_probe_is_quick_on_the_slow_kernel(monkeypatch):
    """A first bf16 matmul that crawls decides at once: no second, longer bf16 measurement."""
    import time

    real_perf = time.perf_counter
    clock = {"t": 0.0}

    def fake_perf():  # the first bf16 matmul appears to take 0.5 s
        return real_perf() + clock["t"]

    measured = []
    monkeypatch.setattr(machine, "matmul_tflops", lambda dtype, **k: measured.append(str(dtype)) or 0.1)

    import torch

    real_matmul = torch.Tensor.__matmul__

    def slow_matmul(a, b):
        if a.dtype == torch.bfloat16:
            clock["t"] += 0.25
        return real_matmul(a, b)

    monkeypatch.setattr(machine.time, "perf_counter", fake_perf)
    monkeypatch.setattr(torch.Tensor, "__matmul__", slow_matmul)
    result = machine._measure()
    assert measured == ["torch.float32"] and result["speedup"] < 0.01


def test_usable_cores_follow_affinity_and_cgroup_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(machine, "_cgroup_cpus", lambda: None)
    assert machine.usable_cores() == 4
    monkeypatch.setattr(machine, "_cgroup_cpus", lambda: 1.5)
    assert machine.usable_cores() == 1


def test_set_threads_splits_cores_between_local_processes(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(machine, "usable_cores", lambda: 4)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert machine.set_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert machine.set_threads() == 1
    finally:
        torch.set_num_threads(before)
