"""Top-k accuracy and loss over a loader, as sums so ranks can add them up."""
import contextlib

import paddle


@paddle.no_grad()
def evaluate_sums(model, loader, loss_fn=None, topk=(1, 5), autocast=contextlib.nullcontext,
                  on_batch=None) -> dict:
    """Returns {'count', 'loss_sum', 'correct@k'...} as float64 sums over this process's data.
    `on_batch()` is called after each batch (for a progress display).

    The model runs in eval mode under `autocast` (needed for an O2-cast model); logits, top-k
    and loss are computed in fp32. The previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    sums = {"count": 0.0, "loss_sum": 0.0, **{f"correct@{k}": 0.0 for k in topk}}
    try:
        for images, labels in loader:
            with autocast():
                logits = model(images)
            logits = logits.astype("float32")
            n = labels.shape[0]
            k_max = min(max(topk), logits.shape[-1])
            top = paddle.topk(logits, k_max, axis=-1)[1]
            hits = (top == labels.reshape([-1, 1])).astype("float32")
            for k in topk:
                sums[f"correct@{k}"] += float(hits[:, :k].sum())
            if loss_fn is not None:
                sums["loss_sum"] += float(loss_fn(logits, labels)) * n
            sums["count"] += n
            if on_batch is not None:
                on_batch()
    finally:
        if was_training:
            model.train()
    return sums


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
    metrics["loss"] = sums["loss_sum"] / count
    metrics["count"] = int(sums["count"])
    return metrics
