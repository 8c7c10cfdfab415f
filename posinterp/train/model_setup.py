"""The model a fine-tune trains: loaded with its rope configured, LoRA adapters, activation checkpointing,
the attention kernel, and the chunked-loss module that wraps it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from posinterp.errors import PosinterpError
from posinterp.speed import ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN
from posinterp.train.config import Plan, TrainConfig

log = logging.getLogger(__name__)


# -- model -----------------------------------------------------------------------------------------
def _free_bytes(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def resolve_checkpointing(choice: str, config: Any, tokens: int, device: Any) -> tuple[bool, str]:
    """(on?, why): `auto` turns it on when the activations would not fit in half the free memory."""
    if choice != "auto":
        return choice == "on", f"--checkpointing {choice}"
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    need = ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN * tokens * layers * hidden
    free = _free_bytes(device)
    on = need > free // 2
    return on, f"auto: ≈{need / 2**30:.1f} GiB of activations {'>' if on else '≤'} half of {free / 2**30:.1f} GiB free"


def resolve_attn(choice: str, device: Any) -> str:
    import importlib.util

    if choice != "auto":
        return choice
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_model(cfg: TrainConfig, source: Any, resume_dir: Path | None, attn: str) -> tuple[Any, Any, dict | None]:
    """(trainable model — HF, or PEFT-wrapped with --lora —, tokenizer, rope summary or None), fp32 weights.

    A full fine-tune resumes by loading the checkpoint's own weights (its config already carries the
    rope scaling, so --rope is not applied twice); LoRA rebuilds base + adapters and loads the
    trainable tensors.
    """
    import torch

    from posinterp.model import loader, refs

    spec = cfg.rope_spec if cfg.rope_spec.method != "none" else None
    if resume_dir is not None and not cfg.lora:
        ref = refs.ModelRef(str(resume_dir), Path(resume_dir))
        lm, info = loader.load_model(ref, dtype=torch.float32, attn_implementation=attn)
    else:
        lm, info = loader.load_model(source, rope=spec, original_length=cfg.original_length, dtype=torch.float32,
                                     attn_implementation=attn)
    tokenizer = refs.load_tokenizer(source)  # the data are always tokenized by the source's own tokenizer
    if cfg.lora:
        lm = _add_lora(cfg, lm)
        if resume_dir is not None:
            from posinterp.train.checkpoint import load_trainable

            load_trainable(lm, resume_dir)
    lm.train()
    return lm, tokenizer, info


def _add_lora(cfg: TrainConfig, lm: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    present = {name.rsplit(".", 1)[-1] for name, _ in lm.named_modules()}
    absent = [t for t in targets if t not in present]
    if not targets or absent:
        raise PosinterpError(f"--lora-targets {cfg.lora_targets!r}: {', '.join(absent) or 'empty'} not in the model; "
                             f"attention projections here are named e.g. "
                             f"{', '.join(sorted(n for n in present if 'proj' in n or 'query' in n)[:6])}")
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning on every LoRA run):
        # a library's note to itself, not to the user, whether train runs from the CLI or the library
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(lm, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                   target_modules=targets, bias="none"))
    extra = [k.strip() for k in cfg.lora_trainable.split(",") if k.strip()]
    for name, param in peft_model.named_parameters():
        if "lora_" not in name and any(k in name for k in extra):
            param.requires_grad_(True)
    return peft_model


def hf_model(lm: Any) -> Any:
    """The transformers model inside (PEFT injects its layers in place, so this runs the adapters too)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def _loss_module(lm: Any, chunk: int) -> Any:
    """Wrap the model so its forward returns the chunked loss (DDP/FSDP then see one module)."""
    import torch

    class CausalLMLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm
            hf = hf_model(lm)
            # FSDP2 auto-wrap reads the layer classes to shard from here
            self._no_split_modules = getattr(hf, "_no_split_modules", None)
            head = hf.get_output_embeddings()
            config = hf.config
            self.plain = (head is None or getattr(head, "bias", None) is not None
                          or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))

        def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                    position_ids: torch.Tensor | None = None) -> torch.Tensor:
            """Mean next-token loss; `labels` (IGNORE_INDEX where not scored) default to input_ids;
            `position_ids` (B, T) replace 0 … T−1 (`--positions pose`), None leaves the model's own."""
            from posinterp.train import loss

            hf = hf_model(self.lm)
            # with position ids, an all-ones mask: without a mask transformers reads each jump in the ids as
            # the start of another packed sequence and masks the chunks off from each other
            extra = {} if position_ids is None else {"position_ids": position_ids,
                                                     "attention_mask": torch.ones_like(input_ids)}
            if self.plain:  # output bias, softcapping or logit scaling: use the model's own loss
                return hf(input_ids=input_ids, labels=input_ids if labels is None else labels, use_cache=False,
                          **extra).loss
            decoder = getattr(hf, hf.base_model_prefix)
            hidden = decoder(input_ids=input_ids, use_cache=False, **extra).last_hidden_state  # (B, T, H)
            return loss.causal_lm_loss(hidden, hf.get_output_embeddings().weight, input_ids, chunk=chunk,
                                       labels=labels)

    return CausalLMLoss()


def setup_model(cfg: TrainConfig, p: Plan, accelerator: Any) -> tuple[Any, Any, dict]:
    """(loss module, tokenizer, facts for the settings): weights, LoRA, activation checkpointing, attention."""
    import torch

    torch.manual_seed(cfg.seed)  # LoRA init; identical on every process
    attn = resolve_attn(cfg.attn, accelerator.device)
    lm, tokenizer, rope_info = build_model(cfg, p.source, p.resume_dir, attn)
    hf = hf_model(lm)
    if rope_info and rope_info.get("composed_with"):
        log.info("note: the model already uses linear scaling ×%g; --rope %s multiplies it to ×%g",
                 rope_info["composed_with"], cfg.rope, rope_info["total_factor"])
    ckpt_on, ckpt_why = resolve_checkpointing(cfg.checkpointing, hf.config, cfg.batch_size * p.seq_len,
                                              accelerator.device)
    if ckpt_on:
        hf.activation_checkpointing_enable()
    if p.seq_len > p.model_window:  # --allow-beyond-window: direct fine-tuning raises the window, RoPE kept
        hf.config.max_position_embeddings = p.seq_len
    facts = {"rope_info": rope_info, "activation_checkpointing": ckpt_on, "activation_checkpointing_why": ckpt_why,
             "attn": attn}
    return _loss_module(lm, cfg.loss_chunk), tokenizer, facts
