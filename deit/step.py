"""The train step: forward, backward, optimizer step. Everything else is a hook."""
import paddle


def make_train_step(model, loss_fn, optimizer, precision, accum_steps: int = 1):
    """PLSC's accumulation: each loaded batch is split into `accum_steps` micro-batches,
    each backpropagated with loss / accum_steps, then one optimizer step per loaded batch.

    Returns `step(engine, batch) -> {"loss": tensor, "batch_size": int}`. The loss stays on
    the device (no host sync); hooks that report convert it when they report.
    """

    def step(engine, batch):
        images, targets = batch
        n = images.shape[0]
        if n % accum_steps:
            raise ValueError(f"batch of {n} images cannot be split into Global.accum_steps="
                             f"{accum_steps} equal micro-batches: make the batch size a multiple")
        model.train()
        total = None
        for images_k, targets_k in zip(paddle.split(images, accum_steps), paddle.split(targets, accum_steps)):
            with precision.autocast():
                loss = loss_fn(model(images_k), targets_k) / accum_steps
            precision.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        engine.fire("after_backward")
        precision.step(optimizer)
        optimizer.clear_grad(set_to_zero=False)
        return {"loss": total, "batch_size": n}

    return step
