"""Gradients only for the PyLayer inputs that want one.

Paddle refuses a PyLayer backward that returns a gradient for an input with stop_gradient set
(a frozen parameter, or a frozen backbone's output feeding a trained head), so the forward
records which inputs want one and the backward returns None for the others.
"""


def remember_wanted(ctx, *inputs) -> None:
    ctx.wanted = tuple(not t.stop_gradient for t in inputs)


def only_wanted(ctx, *grads) -> tuple:
    return tuple(g if wanted else None for g, wanted in zip(grads, ctx.wanted))
