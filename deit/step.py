"""The train step: forward, backward, optimizer step. Everything else is a hook."""
import contextlib

import paddle

from .sharding import clear_grads


def micro_batch_sizes(n: int, k: int) -> list:
    """Split n samples into k near-equal parts (equal when k divides n, as the config requires;
    a last partial batch with drop_last off may not divide)."""
    k = min(k, n)
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def make_train_step(model, loss_fn, optimizer, precision, accum_steps: int = 1):
    """PLSC's accumulation: each loaded batch is split into `accum_steps` micro-batches, each
    backpropagated with its share of the batch-mean loss, then one optimizer step per loaded
    batch (so LR, EMA, loss scale and `iteration` move once per optimizer step).

    Under data parallel (a model with `no_sync`, as paddle.DataParallel) the gradients are
    all-reduced once, in the last micro-batch's backward, not after every micro-batch.

    Returns `step(batch, after_backward=None) -> {"loss": tensor, "batch_size": int}`;
    `after_backward()` runs between the backward passes and the optimizer step (the engine
    fires its AFTER_BACKWARD there). The loss stays on the device (no host sync); hooks that
    report convert it when they report.
    """

    no_sync = getattr(model, "no_sync", None)
    needs_inputs = getattr(loss_fn, "needs_inputs", False)

    def step(batch, after_backward=None):
        images, targets = batch
        n = images.shape[0]
        sizes = micro_batch_sizes(n, accum_steps)
        total = None
        parts = [(images, targets)] if len(sizes) == 1 else zip(paddle.split(images, sizes),
                                                                  paddle.split(targets, sizes))
        for k, (images_k, targets_k) in enumerate(parts):
            last = k == len(sizes) - 1
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                with precision.autocast():
                    logits = model(images_k)
                # a distillation loss also takes the images, for its teacher to see (deit/loss.py)
                loss = (loss_fn(logits, targets_k, images_k) if needs_inputs else loss_fn(logits, targets_k)) \
                    * (images_k.shape[0] / n)
                precision.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if after_backward is not None:
            after_backward()
        precision.step(optimizer)
        clear_grads(optimizer)
        return {"loss": total, "batch_size": n}

    return step
