"""The theory: the interpolation bound (Theorem 2.1), Figure 2, attention logits measured on a real model,
and where each head attends (previous-token and copy heads).

Owns: `bound`, `figure2`, `measure`, `heads` (the verb and its table), `head_measure` (probes and figures,
shared with `train --eval-every`) and `heads_plots`.

May import: the shared core, `posinterp.model`, `posinterp.data` and `posinterp.evals`.
"""
