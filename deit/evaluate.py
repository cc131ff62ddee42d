"""Top-k accuracy and loss over a loader, as sums so ranks can add them up."""
import contextlib

import paddle


@paddle.no_grad()
def evaluate_sums(model, loader, loss_fn=None, topk=(1, 5), autocast=contextlib.nullcontext,
                  on_batch=None) -> dict:
    """Returns {'count', 'loss_sum', 'correct@k'...} as float64 sums over this process's data.
    `on_batch()` is called after each batch (for a progress display). A distilled model is
    scored on the mean of its heads (its eval output) and on each head alone ('cls_correct@1',
    'dist_correct@1').

    The model runs in eval mode under `autocast` (needed for an O2-cast model); logits, top-k
    and loss are computed in fp32. The previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    count, device_sums = 0, None  # summed on the device, read once at the end
    heads = getattr(model, "distilled", False)
    try:
        for images, labels in loader:
            with autocast():
                outputs = model(images, both_heads=True) if heads else (model(images),)  # through its hooks
            outputs = [o.astype("float32") for o in outputs]
            logits = (outputs[0] + outputs[1]) / 2 if heads else outputs[0]
            n = labels.shape[0]
            k_max = min(max(topk), logits.shape[-1])
            top = paddle.topk(logits, k_max, axis=-1)[1]
            hits = (top == labels.reshape([-1, 1])).astype("float64")
            parts = [hits[:, :k].sum() for k in topk]
            for head in outputs if heads else ():
                parts.append((head.argmax(axis=-1) == labels.reshape([-1])).astype("float64").sum())
            parts.append(loss_fn(logits, labels).astype("float64") * n if loss_fn is not None
                         else paddle.zeros([], dtype="float64"))
            batch = paddle.stack(parts)
            device_sums = batch if device_sums is None else device_sums + batch
            count += n
            if on_batch is not None:
                on_batch()
    finally:
        if was_training:
            model.train()
    names = [f"correct@{k}" for k in topk] + (["cls_correct@1", "dist_correct@1"] if heads else []) + ["loss_sum"]
    values = device_sums.numpy().tolist() if device_sums is not None else [0.0] * len(names)
    return {"count": float(count), **dict(zip(names, values))}


class Evaluation:
    """Top-k accuracy and loss of a model over an eval loader: `evaluation(model)` returns the
    metrics over all processes' data, `reduce` adding up the sums of every process (the
    identity for one process). One for training, `--eval` and the run summary."""

    def __init__(self, loader, loss_fn=None, topk=(1, 5), autocast=contextlib.nullcontext,
                 reduce=lambda sums: sums):
        self.loader, self.loss_fn, self.topk, self.autocast, self.reduce = loader, loss_fn, tuple(topk), autocast, reduce

    @property
    def images(self) -> int:
        return len(self.loader.dataset)

    @property
    def batches(self) -> int:
        return len(self.loader)

    def __call__(self, model, on_batch=None) -> dict:
        return sums_to_metrics(self.reduce(evaluate_sums(model, self.loader, self.loss_fn, self.topk,
                                                         self.autocast, on_batch)))


def sums_to_metrics(sums: dict) -> dict:
    count = max(sums["count"], 1.0)
    metrics = {f"top{k.split('@')[1]}": v / count for k, v in sums.items() if k.startswith("correct@")}
    for head in ("cls", "dist"):  # a distilled model's heads alone: top1_cls, top1_dist
        if f"{head}_correct@1" in sums:
            metrics[f"top1_{head}"] = sums[f"{head}_correct@1"] / count
    metrics["loss"] = sums["loss_sum"] / count
    metrics["count"] = int(sums["count"])
    return metrics
