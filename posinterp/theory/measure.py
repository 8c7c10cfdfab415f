"""The `theory measure` verb: do a real model's attention logits leave their trained range, extrapolation vs PI?

    flock /tmp/posinterp-cpu.lock posinterp theory measure smollm2-135m --length 16384 --factor 2 \
        --data gutenberg --out runs/theory-measure

Method. One forward pass over `tokens` tokens of text, all inside the trained window L so every vector
is one the model was trained to produce, records each layer's pre-RoPE queries and keys with forward
hooks on `q_proj`/`k_proj` (on `q_norm`/`k_norm` where the architecture normalizes before RoPE).
For `pairs` sampled positions (query m, key n ≤ m) and every query head (with its GQA key head),
z_j = x_j + i·x_{j+r/2} (transformers' rotate_half pairing over the r rotary dimensions) and
h_j = z^q_j · conj(z^k_j) give the logit the pair would have at relative distance Δ:

    logit(Δ) = scaling · mscale² · Re Σ_j h_j e^{iΔθ_j} + scaling · q_pass·k_pass     (Theorem 2.1's a(Δ))

θ comes from transformers (the model's rotary class for `default`, `ROPE_INIT_FUNCTIONS` for `linear`,
i.e. PI as `posinterp.model.rope.configure` writes it). Per head, the range of logits over integer
Δ ∈ [0, L] with the model's own θ is what training saw; distances Δ ∈ (L, length] are evaluated
(a) with the same θ — extrapolation — and (b) with PI's θ/s, and compared with that range.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.cli import arg, as_config, to_dict
from posinterp.errors import PosinterpError
from posinterp.model.rope import RopeSpec, check_factor, configure, rope_parameters

log = logging.getLogger(__name__)

EXCEED_TOL = 1e-3
"""A head 'exceeds' its in-window range when a logit leaves [min, max] by more than this share of max − min
(float32 rounding alone moves PI's even distances, which coincide with in-window ones, by ~1e-6)."""


@dataclass
class MeasureConfig:
    model: str = arg("smollm2-135m", help="model: HF folder, cached hub id, .gguf file, or alias smollm2-135m",
                     positional=True)
    length: int | None = arg(None, help="largest relative distance evaluated, the extended window L' "
                                        "(default: factor · L)")
    factor: float = arg(2.0, help="PI factor s: positions divided by s")
    original_length: int | None = arg(None, help="trained window L (default: from the model's config)")
    data: str = arg("gutenberg", help="text the queries and keys come from: gutenberg, pydoc, or files/globs")
    split: str = arg("test", help="corpus split", choices=("train", "test", "all"))
    tokens: int | None = arg(None, help="text tokens run through the model (default and limit: L)")
    pairs: int = arg(256, help="(query, key) position pairs sampled, the same for every head")
    step: int = arg(1, help="grid step of the relative distances Δ (keep 1: a multiple of the factor puts every "
                             "PI point on an in-window integer)")
    seed: int = arg(0, help="seed of the position sampling")
    out: Path | None = arg(None, help="output folder for measure.json and measure.png")
    force: bool = arg(False, help="replace a non-empty --out")

    def __post_init__(self) -> None:
        self.factor = check_factor(self.factor)
        for name, low in (("length", 2), ("original_length", 2), ("tokens", 2)):
            value = getattr(self, name)
            if value is not None and int(value) < low:
                raise PosinterpError(f"--{name.replace('_', '-')} {value} must be at least {low}")
        if int(self.pairs) < 1:
            raise PosinterpError(f"--pairs {self.pairs} must be at least 1; e.g. --pairs 256")
        if int(self.step) < 1:
            raise PosinterpError(f"--step {self.step} must be a positive whole number of positions")
        if self.out is not None:
            self.out = Path(self.out)


def rope_frequencies(config: Any, rotary_cls: type) -> tuple[Any, float]:
    """(inv_freq as float64 numpy, attention scaling) from transformers' own rope functions for `config`."""
    import numpy as np
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = rope_parameters(config)["rope_type"]
    if rope_type == "default":  # transformers 5 keeps the default outside ROPE_INIT_FUNCTIONS, on the class
        inv_freq, scale = rotary_cls.compute_default_rope_parameters(config)
    elif rope_type in ROPE_INIT_FUNCTIONS:
        inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    else:
        raise PosinterpError(f"rope_type '{rope_type}' is not in transformers' ROPE_INIT_FUNCTIONS")
    return np.asarray(inv_freq.double().cpu()), float(scale)


def pair_coefficients(q: Any, k: Any, rotary: int) -> tuple[Any, Any]:
    """h_j = z^q_j conj(z^k_j) and the unrotated dot product, for rotate_half pairs.

    q, k: (..., head_dim) real; rotary: number of rotated dimensions r (even, ≤ head_dim).
    Returns h (..., r/2) complex and rest (...) real.
    """
    half = rotary // 2
    zq = q[..., :half] + 1j * q[..., half:rotary]
    zk = k[..., :half] + 1j * k[..., half:rotary]
    rest = (q[..., rotary:] * k[..., rotary:]).sum(-1)
    return zq * zk.conj(), rest


def distance_table(deltas: Any, inv_freq: Any) -> Any:
    """[cos(Δθ); −sin(Δθ)] as float32, shape (r, len(Δ)): [Re h, Im h] @ table = Re Σ h e^{iΔθ}."""
    import numpy as np

    phase = np.outer(inv_freq, deltas)  # float64 angles: Δ·θ reaches 10^4 rad
    return np.concatenate([np.cos(phase), -np.sin(phase)], axis=0).astype(np.float32)


def head_stats(inside: Any, beyond: Any) -> dict:
    """Range of `beyond` logits (pairs × distances) against the range of `inside` ones (numpy arrays)."""
    import numpy as np

    lo, hi = float(inside.min()), float(inside.max())
    span = max(hi - lo, 1e-12)
    tol = EXCEED_TOL * span
    out = (beyond > hi + tol) | (beyond < lo - tol)
    excursion = max(float(beyond.max()) - hi, lo - float(beyond.min()), 0.0) / span
    max_in = float(np.abs(inside).max())
    max_out = float(np.abs(beyond).max())
    return {"min": float(beyond.min()), "max": float(beyond.max()), "max_abs": max_out,
            "ratio_max_abs": max_out / max(max_in, 1e-12), "excursion": excursion * span,
            "excursion_over_span": excursion,
            "exceeds": bool(excursion > EXCEED_TOL), "out_of_range_share": float(out.mean())}


def _attention_modules(model: Any) -> list[Any]:
    mods = [m for _, m in model.named_modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")]
    if not mods:
        raise PosinterpError(f"'{type(model).__name__}' has no attention modules with separate q_proj/k_proj; "
                             "theory measure supports LLaMA-style attention (LLaMA, Mistral, Qwen2, ...)")
    return mods


def _rotary_class(model: Any) -> type:
    for name, m in model.named_modules():
        if name.endswith("rotary_emb"):
            return type(m)
    raise PosinterpError(f"'{type(model).__name__}' has no rotary_emb module; theory measure needs a RoPE model")


def collect_qk(model: Any, ids: list[int], positions: Any, head_dim: int) -> list[tuple[Any, Any]]:
    """One forward pass over `ids`; per attention module the pre-RoPE (q, k) at `positions`.

    Hooks sit on q_proj/k_proj, or on q_norm/k_norm where the architecture normalizes before RoPE.
    Returns [(q (P, H, hd), k (P, H_kv, hd)) float32 per layer], P = len(positions).
    """
    import torch

    keep = torch.as_tensor(positions)
    captured: dict[tuple[int, str], torch.Tensor] = {}

    def hook(layer: int, kind: str):
        def fn(_module, _inputs, output):
            x = output[0] if isinstance(output, tuple) else output  # (B, T, H·hd) or (B, T, H, hd)
            captured[(layer, kind)] = x[0].index_select(0, keep).reshape(len(keep), -1, head_dim).float()
        return fn

    attns = _attention_modules(model)
    handles = []
    try:
        for i, attn in enumerate(attns):
            for kind in ("q", "k"):
                target = getattr(attn, f"{kind}_norm", None)
                target = target if target is not None else getattr(attn, f"{kind}_proj")
                handles.append(target.register_forward_hook(hook(i, kind)))
        with torch.no_grad():
            model.base_model(input_ids=torch.tensor([list(ids)]))
    finally:
        for h in handles:
            h.remove()
    return [(captured[(i, "q")], captured[(i, "k")]) for i in range(len(attns))]


def text_ids(tokenizer: Any, data: str, split: str, tokens: int) -> tuple[list[int], list[str]]:
    from posinterp.data.corpus import iter_documents

    ids: list[int] = []
    names = []
    for doc in iter_documents(data, split=split):
        if not doc.text.strip():
            continue
        ids.extend(tokenizer(doc.text + "\n\n", add_special_tokens=not ids)["input_ids"])
        names.append(doc.name)
        if len(ids) >= tokens:
            return ids[:tokens], names
    raise PosinterpError(f"--data {data} (split {split}) gives only {len(ids)} tokens; lower --tokens to at most that")


def _sizes(cfg: MeasureConfig, L: int) -> tuple[int, int]:
    """(longest distance, text tokens), refused unless beyond L, inside L and of a feasible grid."""
    length = int(cfg.length) if cfg.length is not None else int(round(cfg.factor * L))
    if length <= L:
        raise PosinterpError(f"--length {length} must exceed the trained window {L} (distances beyond L are the point); "
                             f"e.g. --length {2 * L}")
    n_tokens = int(cfg.tokens) if cfg.tokens is not None else L
    if n_tokens > L:
        raise PosinterpError(f"--tokens {n_tokens} exceeds the trained window {L}; queries and keys must come from "
                             f"positions the model was trained on (use --tokens {L} or fewer)")
    if (length + 1) * 3 * cfg.pairs / cfg.step > 4e9:
        raise PosinterpError(f"--pairs {cfg.pairs} × --length {length} / --step {cfg.step} is too large a grid; "
                             "raise --step or lower --pairs")
    return length, n_tokens


def per_head(attns: list, captured: list, pairs: tuple, table_t: Any, counts: tuple[int, int], *, n_kv: int,
             head_dim: int, rotary: int, bound_coef: float) -> tuple[list[dict], list[Any]]:
    """(stats, |logit| envelope by distance) per layer and query head, over the sampled (query, key) pairs.

    `table_t` holds the rotation's cos/sin at the inside distances, then the beyond distances under
    extrapolation, then under PI (`counts` = (inside, beyond)); `bound_coef` = Σθ²/8 · (attention scaling)².
    """
    import torch

    m_idx, n_idx = pairs
    n_in, n_b = counts
    heads, envelopes = [], []
    for layer, attn in enumerate(attns):
        q, k = captured[layer]  # (positions, H, hd), (positions, H_kv, hd)
        group = q.shape[1] // n_kv
        scaling = float(getattr(attn, "scaling", head_dim ** -0.5))
        for head in range(q.shape[1]):
            kv = head // group  # repeat_kv: query head h reads key head h // (H / H_kv)
            h, rest = pair_coefficients(q[m_idx, head].double(), k[n_idx, kv].double(), rotary)  # (P, r/2), (P,)
            coef = torch.cat([h.real, h.imag], dim=1).float()  # (P, r)
            # Theorem 2.1 (corrected, any θ): between integer points |a − a_lin| ≤ Σθ²/8 · max|h|; PI's
            # points Δ/s ≤ L lie between in-window integers, so its excursion is at most this
            theorem = float(h.abs().max()) * bound_coef * scaling
            logits = (coef @ table_t + rest.float()[:, None]) * scaling  # (P, N)
            inside_v, ext_v, pi_v = logits[:, :n_in], logits[:, n_in: n_in + n_b], logits[:, n_in + n_b:]
            stats = {"layer": layer, "head": head, "kv_head": kv,
                     "inside": {"min": float(inside_v.min()), "max": float(inside_v.max()),
                                "max_abs": float(inside_v.abs().max())},
                     "extrapolation": head_stats(inside_v.numpy(), ext_v.numpy()),
                     "pi": head_stats(inside_v.numpy(), pi_v.numpy()), "theorem_bound": theorem}
            stats["pi"]["excursion_over_theorem_bound"] = stats["pi"]["excursion"] / max(theorem, 1e-12)
            heads.append(stats)
            envelopes.append(logits.abs().amax(dim=0).numpy())  # (N,) max over pairs per distance
    return heads, envelopes


def _method_summary(heads: list[dict], method: str) -> dict:
    import numpy as np

    ratio = np.array([h[method]["ratio_max_abs"] for h in heads])
    return {"share_heads_exceeding": float(np.mean([h[method]["exceeds"] for h in heads])),
            "heads_exceeding": int(sum(h[method]["exceeds"] for h in heads)),
            "ratio_max_abs_median": float(np.median(ratio)), "ratio_max_abs_max": float(ratio.max()),
            "excursion_over_span_max": float(max(h[method]["excursion_over_span"] for h in heads)),
            "out_of_range_share_mean": float(np.mean([h[method]["out_of_range_share"] for h in heads]))}


# Long (≈ 85 lines) on purpose: checks, capture, rotation tables, per-head stats (`per_head`) and the
# result dict in reading order; the pieces share a dozen arrays that a split would pass back and forth.
def measure(cfg: MeasureConfig | str | None = None, **kwargs) -> dict:
    """Per head: largest |logit| at distances beyond L against inside L, for extrapolation and for PI.

    `measure("smollm2-135m", length=16384, factor=2, out="runs/m")` → dict (printed; JSON + PNG in `out`).
    """
    import numpy as np
    import torch

    from posinterp.atomic import atomic_dir, check_out, write_json
    from posinterp.data.corpus import check, describe
    from posinterp.model import loader, refs
    from posinterp.versions import versions

    cfg = as_config(MeasureConfig, cfg, kwargs)
    started = time.perf_counter()
    if cfg.out is not None:
        check_out(cfg.out, cfg.force)
    check(cfg.data, split=cfg.split)  # unreadable text is refused before the weights load
    prep = loader.prepare(cfg.model, original_length=cfg.original_length)
    ref, config, L = refs.dense(prep.ref), prep.config, prep.original_length
    length, n_tokens = _sizes(cfg, L)

    model, tokenizer = loader.load_model(ref, dtype=torch.float32)[0], refs.load_tokenizer(ref)
    ids, doc_names = text_ids(tokenizer, cfg.data, cfg.split, n_tokens)
    t_load = time.perf_counter() - started

    # sampled pairs: query m uniform in the text, key n uniform in [0, m]
    rng = np.random.default_rng(cfg.seed)
    m_pos = rng.integers(0, n_tokens, cfg.pairs)
    n_pos = np.floor(rng.random(cfg.pairs) * (m_pos + 1)).astype(int)
    positions = np.unique(np.concatenate([m_pos, n_pos]))
    m_idx, n_idx = np.searchsorted(positions, m_pos), np.searchsorted(positions, n_pos)

    attns = _attention_modules(model)
    n_heads = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(attns[0], "head_dim", None) or getattr(config, "head_dim", None)
                   or config.hidden_size // n_heads)
    t0 = time.perf_counter()
    captured = collect_qk(model, ids, positions, head_dim)
    t_forward = time.perf_counter() - t0

    # frequencies from transformers: the model's own (extrapolation) and PI's (rope_type linear, factor s)
    rotary_cls = _rotary_class(model)
    inv_ext, ms_ext = rope_frequencies(config, rotary_cls)
    config_pi = copy.deepcopy(config)
    pi_info = configure(config_pi, RopeSpec("pi", cfg.factor), L)
    inv_pi, ms_pi = rope_frequencies(config_pi, rotary_cls)
    rotary = 2 * len(inv_ext)
    interp_coef = float((inv_ext ** 2).sum() / 8.0)  # the tight unit-grid coefficient of posinterp.theory
    deltas = np.arange(0, length + 1, cfg.step)
    inside, beyond = deltas[deltas <= L], deltas[deltas > L]
    table = np.concatenate([distance_table(inside, inv_ext) * ms_ext ** 2, distance_table(beyond, inv_ext) * ms_ext ** 2,
                            distance_table(beyond, inv_pi) * ms_pi ** 2], axis=1)
    table_t = torch.from_numpy(table)  # (r, N_in + 2·N_beyond)

    t0 = time.perf_counter()
    heads, envelopes = per_head(attns, captured, (m_idx, n_idx), table_t, (len(inside), len(beyond)),
                                n_kv=n_kv, head_dim=head_dim, rotary=rotary,
                                bound_coef=interp_coef * ms_ext ** 2)
    t_logits = time.perf_counter() - t0

    result = {
        "config": to_dict(cfg),
        "model": {"source": str(cfg.model), "files": str(ref.folder), "layers": len(attns), "heads": n_heads,
                  "kv_heads": n_kv, "head_dim": head_dim, "rotary_dims": rotary,
                  "rope_parameters": rope_parameters(config), "pi_rope_parameters": pi_info.get("rope_parameters")},
        "trained_window": L, "length": length, "factor": cfg.factor,
        "text": {"data": describe(cfg.data, cfg.split), "tokens": n_tokens, "documents": doc_names},
        "distances": {"inside": [0, int(inside[-1])], "beyond": [int(beyond[0]), int(beyond[-1])], "step": cfg.step},
        "pairs": cfg.pairs, "exceed_tolerance": EXCEED_TOL,
        "summary": {"extrapolation": _method_summary(heads, "extrapolation"), "pi": _method_summary(heads, "pi"),
                    "pi_excursion_over_theorem_bound_max": max(h["pi"]["excursion_over_theorem_bound"] for h in heads),
                    "pi_within_theorem": length <= cfg.factor * L},
        "heads": heads,
        "seconds": {"load": t_load, "forward": t_forward, "logits": t_logits,
                    "total": time.perf_counter() - started},
        "versions": versions(),
    }
    _print_measure(result)
    if cfg.out is not None:
        with atomic_dir(cfg.out, cfg.force) as tmp:
            write_json(tmp / "measure.json", result)
            _plot_measure(tmp / "measure.png", result, np.stack(envelopes), inside, beyond)
        log.info("wrote %s", cfg.out)
    return result


def _print_measure(r: dict) -> None:
    m = r["model"]
    print(f"{r['config']['model']}: {m['layers']} layers × {m['heads']} heads (kv {m['kv_heads']}), d={m['head_dim']}, "
          f"trained window L={r['trained_window']}, distances up to {r['length']}, PI factor {r['factor']:g}; "
          f"{r['pairs']} pairs from {r['text']['tokens']} tokens of {r['text']['data']}")
    print(f"{'method':<14} {'heads exceeding':>16} {'median max|beyond|/max|inside|':>31} {'max ratio':>10} "
          f"{'max excursion/span':>19} {'mean out-of-range share':>24}")
    for method in ("extrapolation", "pi"):
        s = r["summary"][method]
        share = f"{s['heads_exceeding']}/{len(r['heads'])} ({100 * s['share_heads_exceeding']:.1f}%)"
        print(f"{method:<14} {share:>16} {s['ratio_max_abs_median']:>31.3f} {s['ratio_max_abs_max']:>10.3f} "
              f"{s['excursion_over_span_max']:>19.4f} {s['out_of_range_share_mean']:>24.4f}")
    if r["summary"]["pi_within_theorem"]:
        print(f"PI's largest excursion is {r['summary']['pi_excursion_over_theorem_bound_max']:.3f} of its head's "
              "Theorem 2.1 bound (corrected; ≤ 1 expected)")
    sec = r["seconds"]
    print(f"seconds: load {sec['load']:.1f}, forward {sec['forward']:.1f}, logits {sec['logits']:.1f}, total {sec['total']:.1f}")


def _plot_measure(path: Path, r: dict, envelopes: Any, inside: Any, beyond: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    heads = r["heads"]
    x = np.array([h["inside"]["max_abs"] for h in heads])
    ext = np.array([h["extrapolation"]["max_abs"] for h in heads])
    pi = np.array([h["pi"]["max_abs"] for h in heads])
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.8))
    ax[0].scatter(x, ext, s=9, c="tab:red", label="extrapolation (θ)")
    ax[0].scatter(x, pi, s=9, c="tab:blue", label=f"PI (θ/{r['factor']:g})")
    lim = [min(x.min(), pi.min()) * 0.9, max(x.max(), ext.max()) * 1.1]
    ax[0].plot(lim, lim, "k--", lw=0.8, label="y = x")
    ax[0].set(xscale="log", yscale="log", xlabel=f"max |logit|, distances ≤ L = {r['trained_window']}",
              ylabel=f"max |logit|, distances in (L, {r['length']}]",
              title=f"{len(heads)} heads: extrapolation {r['summary']['extrapolation']['heads_exceeding']} exceed, "
                    f"PI {r['summary']['pi']['heads_exceeding']} exceed")
    ax[0].legend(fontsize=8)
    worst = int(np.argmax([h["extrapolation"]["ratio_max_abs"] for h in heads]))
    env, n_in, n_b = envelopes[worst], len(inside), len(beyond)
    ax[1].plot(inside, env[:n_in], color="k", lw=0.6, label="inside L (trained)")
    ax[1].plot(beyond, env[n_in: n_in + n_b], color="tab:red", lw=0.6, label="extrapolation")
    ax[1].plot(beyond, env[n_in + n_b:], color="tab:blue", lw=0.6, label="PI")
    ax[1].axhline(heads[worst]["inside"]["max_abs"], color="k", ls="--", lw=0.8)
    ax[1].axvline(r["trained_window"], color="0.5", ls=":", lw=0.8)
    h = heads[worst]
    ax[1].set(xlabel="relative distance Δ", ylabel=f"max over {r['pairs']} pairs of |logit|",
              title=f"layer {h['layer']} head {h['head']} (largest extrapolation ratio "
                    f"{h['extrapolation']['ratio_max_abs']:.2f})")
    ax[1].legend(fontsize=8)
    fig.suptitle(f"{r['config']['model']}: pre-RoPE q/k from {r['text']['tokens']} tokens; logits vs distance", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
