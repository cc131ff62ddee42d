"""AdamW with PLSC's `no_weight_decay_name` rule (substring match on parameter names)."""
from typing import Iterable, Sequence

import paddle


def no_decay_names(model: paddle.nn.Layer, patterns: Sequence[str]) -> set:
    """Structured names (`blocks.0.norm1.weight`) that contain any of `patterns`."""
    return {name for name, _ in model.named_parameters() if any(p in name for p in patterns)}


def build_adamw(model: paddle.nn.Layer, learning_rate: float, betas=(0.9, 0.999), eps=1e-8,
                weight_decay=0.05, no_weight_decay_name: Iterable[str] = (),
                use_master_param: bool = False, exp_avg_force_fp32: bool = False, grad_clip: float = 0.0,
                name: str = "AdamW"):
    """Paddle's AdamW decides decay per parameter by its internal name (`linear_3.w_0`),
    so the structured names are mapped to those once here.

    Moments follow PLSC: fp32 on the fp32 master weights (`use_master_param`, always on under
    O2 here); without master weights they take the parameter's dtype unless
    `exp_avg_force_fp32` keeps them fp32 for low-precision parameters."""
    skip = {p.name for n, p in model.named_parameters() if n in no_decay_names(model, no_weight_decay_name)}
    clip = paddle.nn.ClipGradByGlobalNorm(grad_clip) if grad_clip > 0 else None
    return paddle.optimizer.AdamW(
        learning_rate=learning_rate, beta1=betas[0], beta2=betas[1], epsilon=eps,
        parameters=model.parameters(), weight_decay=weight_decay,
        apply_decay_param_fun=lambda name: name not in skip,
        grad_clip=clip, multi_precision=use_master_param, use_lowprecision_moment=not exp_avg_force_fp32)
