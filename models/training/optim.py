"""AdamW with open_clip's weight-decay exclusions, and linear warm-up then cosine decay.

The token embedding and CoCa's output projection hold 49,408 rows (or columns) each, one per
tokenizer entry, but a dataset uses a few dozen to a few thousand tokens. A dense AdamW step
over them costs more than the whole forward/backward pass of a small model on CPU, so
VocabAdamW updates only the rows that have ever had a gradient. That is exact: a row with no
gradient so far has zero moments, so AdamW would only apply weight decay to it, which is
still applied to the whole tensor. It also takes sparse gradients for those parameters (the
trainer's Objective(sparse_gradients=True)), which spares the backward pass a dense
vocabulary-sized gradient per text-tower call: filling those with zeros cost more than the
text tower itself once texts run in length groups.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from xmodal.models.training.config import TrainConfig


class VocabAdamW(torch.optim.AdamW):
    """torch's AdamW, except vocabulary-sized parameters step only their touched rows."""

    def __init__(self, param_groups: list[dict], vocab_dims: dict[nn.Parameter, int], **kwargs):
        super().__init__(param_groups, **kwargs)
        self.vocab_dims = vocab_dims  # parameter -> the dimension indexed by token id

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise NotImplementedError("closures are not supported")
        # torch's AdamW skips parameters without a gradient: hide the vocabulary ones from it.
        held = {p: p.grad for p in self.vocab_dims if p.grad is not None}
        for p in held:
            p.grad = None
        try:
            super().step()
        finally:
            for p, grad in held.items():
                p.grad = grad
        for group in self.param_groups:
            for p in group["params"]:
                if p in held:
                    self._step_rows(p, held[p], self.vocab_dims[p], group)

    def _step_rows(self, param: torch.Tensor, grad: torch.Tensor, dim: int, group: dict) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
            state["touched"] = torch.zeros(param.shape[dim], dtype=torch.bool, device=param.device)
        state["step"] += 1
        step = state["step"].item()

        # .bool(): Optimizer.load_state_dict casts every state tensor to the parameter's dtype.
        touched = state["touched"].bool()
        if grad.is_sparse:
            grad = grad.coalesce()  # duplicate entries (one per use of a token) summed
            touched[grad.indices()[dim]] = True
        else:
            touched |= grad.ne(0).any(dim=tuple(d for d in range(param.ndim) if d != dim))
        state["touched"] = touched
        rows = touched.nonzero().squeeze(1)

        if weight_decay:
            param.mul_(1 - lr * weight_decay)
        p, g = param.index_select(dim, rows), grad.index_select(dim, rows)
        if g.is_sparse:
            g = g.to_dense()
        exp_avg = state["exp_avg"].index_select(dim, rows).lerp_(g, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(dim, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
        param.index_copy_(dim, rows, p)
        state["exp_avg"].index_copy_(dim, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(dim, rows, exp_avg_sq)


def build_optimizer(model: nn.Module, config: TrainConfig, vocab_size: int | None) -> VocabAdamW:
    # As in open_clip's trainer: no decay for gains, biases, norms and the temperature.
    def decays(name: str, param: nn.Parameter) -> bool:
        return param.ndim >= 2 and not any(k in name for k in ("bn", "ln", "bias", "logit_scale"))

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = []
    # CoCa's text decoder may run at its own learning rate (decoder_lr_scale).
    for decoder in (False, True):
        part = [(n, p) for n, p in named if n.startswith("text_decoder.") == decoder]
        lr = config.lr * (config.decoder_lr_scale if decoder else 1.0)
        for decay in (True, False):
            params = [p for n, p in part if decays(n, p) == decay]
            if params:
                groups.append({"params": params, "weight_decay": config.weight_decay if decay else 0.0, "lr": lr})
    vocab_dims = {}
    if vocab_size:
        for _, p in named:
            if p.ndim == 2 and vocab_size in p.shape:
                vocab_dims[p] = p.shape.index(vocab_size)
    return VocabAdamW(groups, vocab_dims, lr=config.lr, betas=config.betas, eps=config.eps)


def build_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    warmup, total, floor = config.warmup_steps, config.steps, config.min_lr_ratio

    def factor(step: int) -> float:
        # LambdaLR calls this with the number of updates taken so far; 0 is the first update.
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
