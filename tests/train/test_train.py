"""The train verb on tiny models: recipe defaults, final checkpoint, resume, distributed, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from posinterp.errors import PosinterpError
from posinterp.train.config import TrainConfig
from posinterp.train.loop import train
from posinterp.train.setup import Schedule

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(data="pydoc", seq_len=64, tensorboard=False)


def _args(model, out, **kw) -> list[str]:
    flags = {**TINY, **kw}
    argv = ["train", str(model), "--out", str(out)]
    for k, v in flags.items():
        argv += [f"--{k.replace('_', '-')}", str(v).lower() if isinstance(v, bool) else str(v)]
    return argv


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# a driver that can SIGKILL itself at a chosen point inside checkpoint.save
DRIVER = r"""
import os, signal, sys
from posinterp.train import checkpoint
where, step = sys.argv[1], int(sys.argv[2])
def kill_at(name, original):
    def wrapper(*a, **k):
        folder = a[1] if name == "replace_dir" else a[0]
        if folder.name == f"step-{step:08d}":
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*a, **k)
    return wrapper
if where == "before_rename":
    checkpoint.replace_dir = kill_at("replace_dir", checkpoint.replace_dir)
elif where == "before_marker":
    checkpoint._mark_complete = kill_at("_mark_complete", checkpoint._mark_complete)
from posinterp.__main__ import main
sys.exit(main(sys.argv[3:]))
"""


def _driver(argv, where: str, step: int) -> list[str]:
    """`posinterp argv` under DRIVER, which SIGKILLs itself at `where` of step `step` ("none": never)."""
    return [sys.executable, "-c", DRIVER, where, str(step), *argv]


def _run(argv, where="none", step=0, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(_driver(argv, where, step), env=_env(), capture_output=True, text=True, timeout=timeout)


def _start(argv, where="none", step=0) -> subprocess.Popen:
    """`_run` without waiting: several runs side by side."""
    return subprocess.Popen(_driver(argv, where, step), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _bit_equal(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


# -- recipe ----------------------------------------------------------------------------------------
def test_defaults_are_the_paper_recipe(tmp_path):
    cfg = TrainConfig("m", out=tmp_path / "o")
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.warmup, cfg.warmup_from, cfg.grad_clip,
            cfg.schedule, cfg.precision, cfg.data, cfg.split) == (2e-5, 0.9, 0.95, 0.0, 20, 0.1, 1.0, "constant",
                                                                   "auto", "gutenberg", "train")
    assert cfg.checkpoint_dir == tmp_path / "o-checkpoints"


def test_schedule_warms_up_from_ten_percent_then_constant_or_cosine():
    s = Schedule(20, 0.1)
    assert s(0) == pytest.approx(0.1) and s(10) == pytest.approx(0.55) and s(19) == pytest.approx(0.955)
    assert s(20) == 1.0 and s(999) == 1.0
    c = Schedule(20, 0.1, "cosine", total=120, floor=0.1)
    assert c(20) == pytest.approx(1.0) and c(70) == pytest.approx(0.55) and c(120) == pytest.approx(0.1)
    assert Schedule(0, 0.1)(0) == 1.0


@pytest.mark.parametrize("kw, flag", [({"steps": 0}, "--steps"), ({"lr": -1.0}, "--lr"),
                                      ({"warmup_from": 2.0}, "--warmup-from"), ({"beta2": 1.0}, "--beta2"),
                                      ({"rope": "pi:0.5"}, "--rope"), ({"grad_accum": 0}, "--grad-accum")])
def test_bad_settings_are_refused_naming_the_flag(tmp_path, kw, flag):
    with pytest.raises(PosinterpError, match=flag):
        TrainConfig("m", out=tmp_path / "o", **kw)


def test_seq_len_beyond_the_window_is_refused_before_loading(tiny_dir, tmp_path):
    with pytest.raises(PosinterpError, match="exceeds the model's window 256"):
        train(str(tiny_dir()), out=tmp_path / "o", seq_len=512, **{k: v for k, v in TINY.items() if k != "seq_len"})


# -- the run and its output -------------------------------------------------------------------------
def test_final_checkpoint_is_a_standard_extended_checkpoint(tiny_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    out = train(str(tiny_dir()), out=tmp_path / "ft", rope="pi:2", steps=3, save_every=2, lr=1e-3, **TINY)
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"] == {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert config["rope_scaling"]["type"] == "linear" and config["rope_scaling"]["factor"] == 2.0
    assert config["max_position_embeddings"] == 512
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no posinterp
    assert AutoConfig.from_pretrained(out).rope_parameters["factor"] == 2.0
    ids = torch.randint(0, 1000, (1, 16))
    assert torch.isfinite(model(input_ids=ids).logits).all()
    prov = json.loads((out / "posinterp.json").read_text())
    assert prov["factor"] == 2.0 and prov["original_length"] == 256 and prov["target_length"] == 512
    assert prov["training"]["steps"] == 3 and prov["training"]["tokens"] == 3 * 64
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seq_len"] == 64 and settings["global_batch"] == 1
    ckpts = tmp_path / "ft-checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000002", "step-00000003"]
    assert (ckpts / "step-00000002" / "settings.json").is_file()
    rows = [json.loads(line) for line in (ckpts / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_gb"} <= rows[0].keys()
    assert rows[0]["lr"] == pytest.approx(1e-4)  # warmup starts at 10% of the peak
    _bit_equal(out, ckpts / "step-00000003")  # the final output is the last checkpoint's weights
    # the run's checkpoints are not silently mixed with a new run
    with pytest.raises(PosinterpError, match="--resume"):
        train(str(tiny_dir("llama", name="other")), out=tmp_path / "ft2", checkpoint_dir=ckpts, steps=1, **TINY)


def test_tensorboard_logs_are_written(tiny_dir, tmp_path):
    train(str(tiny_dir()), out=tmp_path / "ft", steps=2, **{**TINY, "tensorboard": True})
    assert list((tmp_path / "ft-checkpoints" / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_in_process_continues_identically(tiny_dir, tmp_path):
    model = str(tiny_dir())
    common = dict(lr=1e-3, warmup=2, **TINY)
    ref = train(model, out=tmp_path / "ref", steps=4, **common)
    train(model, out=tmp_path / "part", steps=2, **common)
    out = train(model, out=tmp_path / "part", steps=4, resume=True, force=True, **common)
    _bit_equal(ref, out)
    assert _losses(tmp_path / "ref-checkpoints") == _losses(tmp_path / "part-checkpoints")
    with pytest.raises(PosinterpError, match="--seq-len is 32"):
        train(model, out=tmp_path / "part", steps=6, resume=True, force=True, **{**common, "seq_len": 32})


def test_the_stages_drive_the_same_run_by_hand(tiny_dir, tmp_path):
    """setup → train_step × N → finish is `train` itself: same losses, bit-equal weights."""
    from posinterp.train import loop, setup

    model = str(tiny_dir())
    common = dict(lr=1e-3, warmup=2, steps=3, **TINY)
    ref = train(model, out=tmp_path / "ref", **common)
    s = setup.setup(TrainConfig(model=model, out=tmp_path / "hand", **common))
    assert s.start == 0 and s.plan.seq_len == 64 and s.settings["global_batch"] == 1
    rows = [loop.train_step(s, step) for step in range(1, 4)]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["tokens"] == 3 * 64
    s.metrics.close()
    out = loop.finish(s, 0.0)
    _bit_equal(ref, out)
    assert [r["loss"] for r in rows] == _losses(tmp_path / "ref-checkpoints")


def test_lora_trains_and_merges(tiny_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    src = tiny_dir()
    with warnings.catch_warnings(record=True) as caught:  # called as a library: no peft notes to itself either
        warnings.simplefilter("always")
        out = train(str(src), out=tmp_path / "lora", rope="pi:2", steps=3, lr=1e-2, warmup=0, lora=True,
                    lora_rank=4, checkpointing="on", **TINY)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    merged, base = load_file(str(out / "model.safetensors")), load_file(str(src / "model.safetensors"))
    assert not any("lora" in k for k in merged) and merged.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert any("q_proj" in k for k in changed) and any("norm" in k for k in changed)
    assert any("embed_tokens" in k for k in changed)  # LongLoRA: embeddings train too
    assert not any("mlp" in k for k in changed)  # everything else frozen
    AutoModelForCausalLM.from_pretrained(out)
    ck = tmp_path / "lora-checkpoints" / "step-00000003"
    assert (ck / "trainable.safetensors").is_file()
    assert json.loads((out / "posinterp.json").read_text())["training"]["lora"]["rank"] == 4


def test_lora_resume_is_bit_equal(tiny_dir, tmp_path):
    model = str(tiny_dir())
    common = dict(lr=1e-2, warmup=0, lora=True, lora_rank=4, **TINY)
    ref = train(model, out=tmp_path / "ref", steps=4, **common)
    train(model, out=tmp_path / "part", steps=2, **common)
    _bit_equal(ref, train(model, out=tmp_path / "part", steps=4, resume=True, force=True, **common))


# -- failures --------------------------------------------------------------------------------------
def test_non_finite_loss_stops_before_the_step_and_keeps_the_last_good_checkpoint(tiny_dir, tmp_path, monkeypatch):
    from posinterp.train import loss

    real, calls = loss.causal_lm_loss, {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        value = real(*a, **k)
        return value * float("inf") if calls["n"] == 3 else value

    monkeypatch.setattr(loss, "causal_lm_loss", poisoned)
    with pytest.raises(PosinterpError, match=r"non-finite loss \(inf\) at step 3.*step-00000002"):
        train(str(tiny_dir()), out=tmp_path / "ft", steps=5, save_every=2, **TINY)
    ckpts = tmp_path / "ft-checkpoints"
    assert [p.name for p in sorted(ckpts.glob("step-*"))] == ["step-00000002"]
    assert not (tmp_path / "ft").exists()
    assert json.loads((ckpts / "metrics.jsonl").read_text().splitlines()[-1])["error"] == "non-finite loss"


def test_non_finite_gradient_stops_naming_the_step(tiny_dir, tmp_path, monkeypatch):
    from posinterp.train import model_setup as train_mod

    real_build, calls = train_mod.build_model, {"n": 0}

    def build(*a, **k):
        lm, tok, info = real_build(*a, **k)

        def hook(grad):
            calls["n"] += 1
            return grad * float("nan") if calls["n"] == 2 else grad

        lm.model.layers[0].mlp.down_proj.weight.register_hook(hook)
        return lm, tok, info

    monkeypatch.setattr(train_mod, "build_model", build)
    with pytest.raises(PosinterpError, match="non-finite gradient norm .* at step 2"):
        train(str(tiny_dir()), out=tmp_path / "ft", steps=4, **TINY)


# -- subprocesses: kill, Ctrl-C, two processes -------------------------------------------------------
@pytest.mark.slow
def test_sigkill_anywhere_then_resume_gives_bit_equal_weights(tiny_dir, tmp_path):
    # the reference and the three killed runs are independent (one thread each): they run side by side,
    # then the three resumes do. The precision is named: `auto` would have the four probe bf16 against fp32
    # at once, on cores they share, and they disagreed (one run in fp32, three in bf16, 1 time in 5)
    model = tiny_dir()
    flags = dict(steps=8, save_every=2, keep=3, lr=1e-3, warmup=2, precision="fp32")
    cases = [("before_rename", 4), ("before_marker", 4), ("anytime", 0)]
    ref = _start(_args(model, tmp_path / "ref", **flags))
    killed = {where: _start(_args(model, tmp_path / f"run-{where}", **flags), where=where, step=step)
              for where, step in cases}
    # SIGKILL at an arbitrary moment: once step 5 is logged, mid-step 6
    metrics = Path(f"{tmp_path / 'run-anytime'}-checkpoints") / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and killed["anytime"].poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    killed["anytime"].send_signal(signal.SIGKILL)
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-2000:]
    for where, proc in killed.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, err[-2000:]
        if where != "anytime":
            assert not (tmp_path / f"run-{where}").exists()
    resumed = {where: _start(_args(model, tmp_path / f"run-{where}", resume=True, **flags)) for where, _ in cases}
    for where, proc in resumed.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        if where == "before_marker":
            assert "skipping incomplete checkpoint" in err
        out = tmp_path / f"run-{where}"
        _bit_equal(tmp_path / "ref", out)
        assert _losses(Path(f"{out}-checkpoints")) == _losses(tmp_path / "ref-checkpoints")


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_then_resume_is_bit_equal(tiny_dir, tmp_path):
    model = tiny_dir()
    flags = dict(steps=40, save_every=0, lr=1e-3, warmup=2)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "posinterp", *_args(model, out, **flags)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = Path(f"{out}-checkpoints") / "metrics.jsonl"
    while proc.poll() is None and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "continue with --resume" in err
    from posinterp.train import checkpoint

    saved = checkpoint.latest(Path(f"{out}-checkpoints"))
    assert saved is not None and 3 <= checkpoint.read_state(saved)["step"] < 40
    assert _run(_args(model, out, resume=True, **flags)).returncode == 0
    ref = _run(_args(model, tmp_path / "ref", **flags))
    assert ref.returncode == 0
    _bit_equal(tmp_path / "ref", out)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tiny_dir, tmp_path):
    model = tiny_dir()
    flags = dict(steps=4, lr=1e-3, warmup=0, precision="fp32")
    one = _run(_args(model, tmp_path / "one", grad_accum=2, **flags))
    assert one.returncode == 0, one.stderr[-2000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "posinterp", *_args(model, tmp_path / "two", grad_accum=1, **flags)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # a timeout kills the workers too
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, err[-3000:]
    settings = json.loads((tmp_path / "two" / "settings.json").read_text())
    assert settings["processes"] == 2 and settings["global_batch"] == 2 and "MULTI_CPU" in settings["distributed"]
    a, b = _losses(tmp_path / "one-checkpoints"), _losses(tmp_path / "two-checkpoints")
    assert a == pytest.approx(b, rel=1e-6, abs=1e-6)
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fsdp_request_on_cpu_is_reported_not_hidden(tiny_dir, tmp_path):
    """accelerate turns an FSDP request on CPU into DDP; the log and settings.json say so."""
    model = tiny_dir()
    run = subprocess.run(
        [sys.executable, "-m", "posinterp", *_args(model, tmp_path / "ft", steps=1)],
        env=_env(ACCELERATE_USE_FSDP="true"), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "FSDP was requested but accelerate runs a single process on cpu" in run.stderr
    note = json.loads((tmp_path / "ft" / "settings.json").read_text())["distributed_note"]
    assert note.startswith("FSDP was requested")


def test_activation_checkpointing_auto_rule(monkeypatch):
    from posinterp.train import model_setup as train_mod

    class Cfg:
        hidden_size, num_hidden_layers = 576, 30

    cpu = torch.device("cpu")
    monkeypatch.setattr(train_mod, "_free_bytes", lambda device: 20 * 2**30)
    assert train_mod.resolve_checkpointing("auto", Cfg, 4096, cpu)[0] is False  # ≈7.2 GiB ≤ 10
    assert train_mod.resolve_checkpointing("auto", Cfg, 16384, cpu)[0] is True  # ≈29 GiB > 10
    assert train_mod.resolve_checkpointing("off", Cfg, 16384, cpu) == (False, "--checkpointing off")


# -- --task summarize ------------------------------------------------------------------------------
def _pairs_file(tmp_path: Path, n: int = 5) -> Path:
    rows = [{"report": " ".join(f"fact{i}-{j}" for j in range(60)), "summary": f"Summary number {i} of the report."}
            for i in range(n)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_summarize_loss_is_the_summary_tokens_only(tiny_dir, tmp_path, smol_tokenizer):
    """Step 1's logged loss equals a loss computed by hand on the first example's summary tokens."""
    from transformers import AutoModelForCausalLM

    from posinterp.data import sft, summaries
    from posinterp.train.loss import full_logits_loss

    model, data = tiny_dir(), _pairs_file(tmp_path)
    settings = dict(task="summarize", data=str(data), seq_len=128, max_summary_tokens=16, precision="fp32",
                    tensorboard=False, seed=3, lr=1e-3)
    out = train(str(model), out=tmp_path / "sum", steps=2, **settings)
    first = json.loads((tmp_path / "sum-checkpoints" / "metrics.jsonl").read_text().splitlines()[0])

    budget = sft.fit_budget(smol_tokenizer, 128, max_summary_tokens=16, window_flag="--seq-len")
    (example,) = sft.SummaryExamples(smol_tokenizer, summaries.load_pairs(str(data)), budget, seed=3).take(1)
    ids, labels = sft.collate([example], smol_tokenizer.eos_token_id)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    with torch.no_grad():
        hidden = lm.model(input_ids=ids).last_hidden_state
        expected = full_logits_loss(hidden, lm.lm_head.weight, ids, labels).item()
        everything = full_logits_loss(hidden, lm.lm_head.weight, ids).item()
    assert first["loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(expected - everything) > 1e-3  # the prompt's tokens would change it
    written = json.loads((out / "posinterp.json").read_text())["training"]
    assert written["task"] == "summarize" and written["data"] == f"{data}:train"
    assert first["tokens"] == len(example[0])


def test_summarize_resume_continues_the_same_examples(tiny_dir, tmp_path):
    model, data = str(tiny_dir()), _pairs_file(tmp_path, n=3)
    common = dict(task="summarize", data=str(data), seq_len=128, max_summary_tokens=16, tensorboard=False,
                  batch_size=2, lr=1e-3)
    ref = train(model, out=tmp_path / "ref", steps=4, **common)
    train(model, out=tmp_path / "part", steps=2, **common)
    out = train(model, out=tmp_path / "part", steps=4, resume=True, force=True, **common)
    _bit_equal(ref, out)
    assert _losses(tmp_path / "ref-checkpoints") == _losses(tmp_path / "part-checkpoints")


@pytest.mark.parametrize("kw, message", [
    (dict(max_summary_tokens=200), "--max-summary-tokens"),
    (dict(max_summary_tokens=16, max_input_tokens=500), "--max-input-tokens"),
    (dict(max_summary_tokens=16, document_field="body"), "--document-field"),
])
def test_summarize_refuses_bad_settings_before_loading(tiny_dir, tmp_path, kw, message):
    settings = dict(task="summarize", data=str(_pairs_file(tmp_path)), seq_len=128, tensorboard=False, **kw)
    with pytest.raises(PosinterpError, match=message):
        train(str(tiny_dir()), out=tmp_path / "x", steps=1, **settings)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x-checkpoints").exists()


def test_default_data_follows_the_task(tmp_path):
    assert TrainConfig("m", out=tmp_path / "a").data == "gutenberg"
    assert TrainConfig("m", out=tmp_path / "a", task="summarize").data == "pydoc-summaries"


# -- evaluation during training, token-weighted summarize loss --------------------------------------
def test_eval_every_logs_curves_without_changing_the_run(tiny_dir, tmp_path):
    model = str(tiny_dir())
    common = dict(steps=4, lr=1e-3, precision="fp32", save_every=0, **TINY)
    plain = train(model, out=tmp_path / "plain", **common)
    probed = train(model, out=tmp_path / "probed", eval_every=2, eval_lengths="96,128", eval_trials=2,
                   eval_ppl_data="pydoc", eval_ppl_tokens=300, eval_heads_length=128, **common)
    _bit_equal(plain, probed)  # the heads figures (eager attention for the call) change nothing either
    rows = [json.loads(line) for line in (tmp_path / "probed-checkpoints" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert [r["tokens"] for r in evals] == [0, 2 * 64, 4 * 64]
    for r in evals:
        assert set(r["passkey"]) == {"96", "128"} and all(0.0 <= v <= 1.0 for v in r["passkey"].values())
        assert r["ppl"] > 1 and r["ppl_window"] == 64 and 0 < r["ppl_tokens"] <= 300
        assert len(r["answers"]) == 4 and all(len(a["key"]) == 5 for a in r["answers"])
    assert evals[0]["ppl"] != evals[-1]["ppl"]  # the curve moves with training
    assert _losses_of(rows) == _losses(tmp_path / "plain-checkpoints")
    written = json.loads((probed / "posinterp.json").read_text())["training"]
    assert written["eval_every"] == 2 and written["precision"] == "fp32"
    # the heads figures come from theory_heads' own measure/figures: at step 0 they equal the verb's
    from posinterp.theory import heads

    keys = {"length", "previous_token_heads", "previous_token_mass_1", "previous_token_mass_2",
            "previous_token_profile", "previous_token_peaks", "induction_1",
            "induction_2", "copy_1", "copy_2", "repeat_loss", "teacher_forced_digit_accuracy"}
    assert all(set(r["heads"]) == keys and r["heads"]["length"] == 128 for r in evals)
    # the followed heads' mean mass at every offset 0..MAX_OFFSET, plus the first key and the rest
    assert all(len(r["heads"]["previous_token_profile"]) == heads.MAX_OFFSET + 3 for r in evals
               if r["heads"]["previous_token_profile"] is not None)
    assert evals[0]["heads"]["repeat_loss"] != evals[-1]["heads"]["repeat_loss"]  # it moves with training
    verb = heads.heads(model, length=128, data="pydoc", device="cpu", dtype="float32")
    step0 = {k: v for k, v in evals[0]["heads"].items() if k != "length"}
    assert set(step0) == set(verb["figures"])
    for k, v in verb["figures"].items():
        assert (step0[k] is None and v is None) or step0[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    sets = json.loads((tmp_path / "probed-checkpoints" / "heads_sets.json").read_text())["head_sets"]
    assert sets == verb["head_sets"]  # followed from the first evaluation on (and after a resume)


def test_eval_heads_settings_are_refused_in_one_line(tmp_path):
    with pytest.raises(PosinterpError, match="--eval-heads-length -1"):
        TrainConfig("m", out=tmp_path / "o", eval_every=5, eval_heads_length=-1)
    with pytest.raises(PosinterpError, match="--eval-heads-reference"):
        TrainConfig("m", out=tmp_path / "o", eval_every=5, eval_heads_reference=tmp_path / "none.json")


def test_the_opening_line_says_in_words_what_runs():
    from posinterp.train.setup import describe_processes

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert describe_processes("NO", 1, cpu) == "one process on the CPU"
    assert describe_processes("MULTI_CPU", 2, cpu) == "2 DDP processes on the CPU"
    assert describe_processes("FSDP", 8, gpu) == "FSDP on 8 GPUs"
    assert describe_processes("NO", 1, gpu) == "one process on the GPU"


def _losses_of(rows: list[dict]) -> list[float]:
    return [r["loss"] for r in rows if r.get("kind", "train") == "train"]


def test_bad_eval_settings_are_refused(tmp_path):
    with pytest.raises(PosinterpError, match="--eval-every -1"):
        TrainConfig("m", out=tmp_path / "o", eval_every=-1)
    with pytest.raises(PosinterpError, match="--eval-lengths"):
        TrainConfig("m", out=tmp_path / "o", eval_every=5, eval_lengths="a,b")


def test_summarize_loss_does_not_depend_on_how_the_batch_is_split(tiny_dir, tmp_path):
    """Examples of unequal length: one micro-batch of 2 and two micro-batches of 1 give the same loss."""
    data = tmp_path / "uneven.jsonl"
    data.write_text("".join(json.dumps({"report": f"report {i} " * 20, "summary": "word " * (2 + 5 * i)}) + "\n"
                            for i in range(4)))
    model = str(tiny_dir())
    common = dict(task="summarize", data=str(data), seq_len=128, max_summary_tokens=16, tensorboard=False,
                  precision="fp32", lr=1e-3, steps=2)
    train(model, out=tmp_path / "one", batch_size=2, grad_accum=1, **common)
    train(model, out=tmp_path / "two", batch_size=1, grad_accum=2, **common)
    one, two = _losses(tmp_path / "one-checkpoints"), _losses(tmp_path / "two-checkpoints")
    assert one == pytest.approx(two, rel=1e-5)


def test_precision_auto_is_resolved_and_recorded(tiny_dir, tmp_path, monkeypatch):
    from posinterp import machine

    monkeypatch.setattr(machine, "probe", lambda refresh=False: {
        "bf16_tflops": 0.0003, "fp32_tflops": 0.09, "speedup": 0.0033, "capability": "AVX2", "threads": 2})
    out = train(str(tiny_dir()), out=tmp_path / "auto", steps=1, **TINY)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["precision"] == "fp32" and "AVX2" in settings["precision_why"]


def test_direct_fine_tuning_beyond_the_window_keeps_rope_and_raises_the_window(tiny_dir, tmp_path):
    model = tiny_dir(window=256)
    with pytest.raises(PosinterpError, match="--allow-beyond-window"):
        train(str(model), out=tmp_path / "no", steps=1, data="pydoc", seq_len=512, tensorboard=False)
    out = train(str(model), out=tmp_path / "direct", steps=1, data="pydoc", seq_len=512, tensorboard=False,
                allow_beyond_window=True, precision="fp32")
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 512 and config["rope_parameters"]["rope_type"] == "default"
    assert config["rope_parameters"]["rope_theta"] == 10000.0
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 512
