"""PNG curves of a run from its metrics.jsonl: loss, learning rate, top-1/top-5, images/s."""
import json
import os

from .errors import SetupError


def read_metrics(output_dir: str):
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SetupError(f"{path} does not exist: point `run.py plot` at a training output_dir")
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", "replace").split("\n")
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno < len(lines) - (lines[-1] == ""):
                raise SetupError(f"{path}:{lineno}: not a JSON line") from None
            # the last line, torn: normal while a run writes it or after a kill
            print(f"note: {path}:{lineno}: the last line is incomplete (a run writing it, or killed): skipped")
    return records


def plot_run(output_dir: str, dest: str = None) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SetupError("plotting needs matplotlib: pip install matplotlib "
                         "(or pip install -e '.[plot]')") from None
    records = read_metrics(output_dir)
    train = [r for r in records if r["event"] == "train"]
    evals = [r for r in records if r["event"] == "eval"]
    # epochs as the x axis (older files without `epochs_done`: iterations)
    x_key = "epochs_done" if all("epochs_done" in r for r in train + evals) else "iteration"
    x_label = "epoch" if x_key == "epochs_done" else "iteration"
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [(axes[0][0], "loss", train, "loss"), (axes[0][1], "lr", train, "learning rate"),
              (axes[1][1], "img_per_s", train, "train images/s")]
    for ax, key, rows, title in panels:
        points = [(r[x_key], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), label="train")
        ax.set_title(title)
        ax.set_xlabel(x_label)
    eval_loss = [(r[x_key], r["loss"]) for r in evals if "loss" in r]
    if eval_loss:
        axes[0][0].plot(*zip(*eval_loss), marker="o", label="eval")
        axes[0][0].legend()
    ax = axes[1][0]
    for key in ("top1", "top5"):
        points = [(r[x_key], r[key]) for r in evals if key in r]
        if points:
            ax.plot(*zip(*points), marker="o", label=key)
    ax.set_title("eval accuracy")
    ax.set_xlabel(x_label)
    ax.legend()
    fig.tight_layout()
    dest = dest or os.path.join(output_dir, "curves.png")
    fig.savefig(dest, dpi=80)
    plt.close(fig)
    return dest
