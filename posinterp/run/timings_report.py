"""The report's timings: each stage's measured seconds beside the price `run` gave it before running (from
`estimates.json`, the probe of this machine), and the trims a `--budget` made."""

from __future__ import annotations


def timings_table(timings: dict[str, float], estimates: dict | None) -> list[str]:
    """Measured seconds per stage, beside the estimate `run` priced from this machine before running."""
    est = (estimates or {}).get("stages", {})
    lines = ["## Timings", ""]
    if (estimates or {}).get("trimmed"):
        lines += [f"Trimmed to fit --budget {estimates['budget_s'] / 60:.0f} min: "
                  + "; ".join(estimates["trimmed"]) + ".", ""]
    if not est:
        lines += ["| stage | seconds |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in timings.items()]
        return lines + [f"| **all stages** | **{sum(timings.values()):.0f}** |"]
    lines += ["| stage | estimated s | measured s | measured / estimated |", "|---|---|---|---|"]
    for k, v in timings.items():
        e = est.get(k)
        lines.append(f"| {k} | {e:.0f} | {v:.0f} | {v / e:.2f} |" if e else f"| {k} | – | {v:.0f} | – |")
    both = [k for k in timings if est.get(k)]
    te, tm = sum(est[k] for k in both), sum(timings[k] for k in both)
    lines.append(f"| **all stages** | **{te:.0f}** | **{sum(timings.values()):.0f}** | "
                 f"**{tm / te:.2f}** |" if te else f"| **all stages** | – | **{sum(timings.values()):.0f}** | – |")
    speed = (estimates or {}).get("speed") or {}
    if speed:
        lines += ["", f"Estimates from a probe of this machine before the run ({speed.get('precision')}: one forward "
                  f"at {', '.join(str(k) for k in speed.get('forward', {}))} tokens, a training micro-step at "
                  f"{', '.join(str(k) for k in speed.get('train', {})) or speed.get('train_tokens')} tokens and an "
                  "optimizer step" + (f", one layer's attention at {', '.join(str(k) for k in speed['attention'])} "
                                      "tokens): a forward is priced as a·T + layers × attention(T), training as "
                                      "a·T + b·T²." if speed.get("attention") else "), each fitted as t(T) = a·T + b·T².")]
    return lines
