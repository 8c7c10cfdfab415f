"""Causal LM loss without the full logits: lm_head + cross-entropy, a chunk of tokens at a time.

The plain path materializes logits for every position: at 32768 tokens × 49152 vocab that is
6 GB in fp32, plus as much again for their gradient. Here the final hidden states (N, H) go
through the output projection `chunk` rows at a time; each chunk's logits (chunk, V) live only
while that chunk is processed, in fp32 for the log-softmax, whatever the matmul dtype.

The gradient of the summed cross-entropy with respect to a chunk's logits is known in closed form
(softmax − one-hot), so the forward pass computes the loss *and* the gradients of the hidden
states and of the weight in the same sweep (as Liger's fused linear cross-entropy does): three
matmuls per chunk, the same as the plain path, instead of four with recompute-in-backward. The
backward pass only scales the stored gradients by the incoming scalar. Under `torch.no_grad` (or
when neither input needs a gradient) only the loss is computed.

Memory: hidden-sized gradient (N, H) + one fp32 copy of the weight's gradient (V, H) + one chunk
of logits, instead of 2 × (N, V) fp32.
"""

from __future__ import annotations

from typing import Any

from posinterp.data.sft import IGNORE_INDEX  # the label left out of the loss; its home is data/sft

DEFAULT_CHUNK = 2048
"""Rows per chunk: (2048, 49152) fp32 logits are 400 MB; bigger chunks do not run faster on CPU."""


def _compute_dtype(hidden: Any) -> Any:
    """The matmul dtype: the autocast dtype when autocast is on for this device, else the input's."""
    import torch

    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def _linear_cross_entropy_class() -> Any:
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """mean over non-ignored rows of CE(hidden @ weight.T, targets), chunked; see the module doc."""

        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk, compute_dtype, ignore_index):
            # hidden (N, H), weight (V, H), targets (N,) long
            need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            with torch.autocast(hidden.device.type, enabled=False):
                acc = torch.promote_types(compute_dtype, torch.float32)  # fp32, or fp64 in tests
                valid_all = targets.ne(ignore_index)
                count = valid_all.sum().clamp(min=1).to(acc)
                w = weight.to(compute_dtype)
                grad_h = torch.empty_like(hidden) if need_h else None
                grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
                total = torch.zeros((), dtype=acc, device=hidden.device)
                for start in range(0, hidden.shape[0], chunk):
                    h = hidden[start:start + chunk].to(compute_dtype)  # (c, H)
                    t = targets[start:start + chunk]  # (c,)
                    valid = valid_all[start:start + chunk]
                    safe_t = t.clamp(min=0)
                    logits = (h @ w.T).to(acc)  # (c, V) fp32
                    lse = torch.logsumexp(logits, dim=-1)  # (c,)
                    target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)
                    total += ((lse - target_logit) * valid).sum()
                    if not (need_h or need_w):
                        continue
                    # d(sum of CE)/d logits = softmax − onehot, zero for ignored rows, over `count`
                    g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    g[torch.arange(g.shape[0], device=g.device), safe_t] -= 1.0
                    g.mul_((valid.to(g.dtype) / count)[:, None])
                    g = g.to(compute_dtype)
                    if need_h:
                        grad_h[start:start + chunk] = (g @ w).to(hidden.dtype)  # (c, H)
                    if need_w:
                        grad_w += (g.T @ h).to(acc)  # (V, H)
                loss = total / count
            ctx.save_for_backward(*(x for x in (grad_h, grad_w) if x is not None))
            ctx.has = (need_h, need_w)
            ctx.weight_dtype = weight.dtype
            return loss

        @staticmethod
        def backward(ctx, grad_out):
            saved = list(ctx.saved_tensors)
            need_h, need_w = ctx.has
            grad_h = saved.pop(0) * grad_out if need_h else None
            grad_w = (saved.pop(0) * grad_out).to(ctx.weight_dtype) if need_w else None
            return grad_h, grad_w, None, None, None, None

    return LinearCrossEntropy


_FUNCTION: Any = None


def linear_cross_entropy(hidden: Any, weight: Any, targets: Any, *, chunk: int = DEFAULT_CHUNK,
                         ignore_index: int = IGNORE_INDEX) -> Any:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, never holding all the logits.

    hidden (N, H) or (B, T, H); weight (V, H); targets with hidden's leading shape, `ignore_index`
    rows left out of the mean. Matmuls run in the autocast dtype when autocast is on; the
    log-softmax always in fp32.
    """
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _linear_cross_entropy_class()
    if chunk < 1:
        raise ValueError(f"chunk must be a positive row count, got {chunk}")
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    return _FUNCTION.apply(h, weight, t, int(chunk), _compute_dtype(hidden), int(ignore_index))


def causal_lm_loss(hidden: Any, weight: Any, input_ids: Any, *, chunk: int = DEFAULT_CHUNK,
                   labels: Any = None) -> Any:
    """Next-token loss of a causal LM from its final hidden states (B, T, H).

    Position t predicts token t+1 of `labels` (default: `input_ids`), as transformers' own
    loss does; the last position of each row predicts nothing.
    """
    labels = input_ids if labels is None else labels
    return linear_cross_entropy(hidden[:, :-1], weight, labels[:, 1:], chunk=chunk)


def full_logits_loss(hidden: Any, weight: Any, input_ids: Any, labels: Any = None) -> Any:
    """The plain reference: all logits at once, fp32 cross-entropy (what `causal_lm_loss` saves)."""
    import torch
    import torch.nn.functional as F

    labels = input_ids if labels is None else labels
    logits = hidden[:, :-1] @ weight.T  # (B, T-1, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)
