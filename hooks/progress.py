"""What a person watching the run sees: a rich progress bar and tables on a terminal,
plain log lines elsewhere (CI, files). Rank 0 only."""
import sys
import time

from rich.console import Console
from rich.file_proxy import FileProxy
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine import Hook, dist

from .order import Order
from . import kinds



def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


EVAL_BAR_AFTER_S = 2.0     # an evaluation shorter than this shows no bar
EVAL_LINE_EVERY_S = 30.0   # plain mode: a progress line this often during a long evaluation


def resolved_mode(mode: str, stream=None) -> str:
    """Global.progress as shown: `auto` is a rich bar on a terminal, plain lines otherwise."""
    if mode == "auto":
        return "rich" if (stream or sys.stdout).isatty() else "plain"
    return mode


class Progress(Hook):
    priority = Order.PROGRESS

    def __init__(self, mode: str = "auto", stream=None, log=None):
        """`log(text)` receives the plain lines when the terminal shows a bar and tables
        instead (train.log wants text), and what is printed while a bar is live; in plain
        mode the lines are printed, log or not."""
        self.log = log
        self.mode = resolved_mode(mode, stream) if dist.is_main() else "off"
        # a bar draws on the terminal it started on; plain lines follow sys.stdout (train.log's tee)
        self.console = Console(file=stream or (sys.stdout if self.mode == "rich" else None),
                               highlight=False, soft_wrap=True)
        self.bar = self.task = None
        self.eval_task = self.eval_bar_owned = None
        self._saved_streams = None

    def started(self, engine):
        self.start_time = time.perf_counter()

    def epoch_start(self, engine):
        if self.mode == "rich":
            state = engine.state
            self.bar = self._start_bar(transient=False)
            self.task = self.bar.add_task("epoch", total=state.iters_per_epoch, completed=state.epoch_iter,
                                          epoch=state.epoch, epochs=state.max_epochs, info="")

    # ---- evaluation progress ------------------------------------------------------------
    def eval_start(self, engine):
        self.eval_started = self.eval_line_at = time.perf_counter()

    def eval_iter_end(self, engine):
        """A bar (or in plain mode a line every 30 s) once an evaluation has run 2 s: short
        evaluations stay quiet, long ones (ImageNet's 50k images) show they are alive."""
        progress, now = engine.state.evaluation, time.perf_counter()
        if self.mode == "rich" and (self.eval_task is not None or now - self.eval_started > EVAL_BAR_AFTER_S):
            if self.eval_task is None:
                self.eval_bar_owned = self.bar is None  # mid-epoch, the epoch's bar takes the row
                if self.eval_bar_owned:
                    self.bar = self._start_bar(transient=True)
                self.eval_task = self.bar.add_task(progress.name, total=progress.total, epoch=engine.state.epoch,
                                                   epochs=engine.state.max_epochs, info="")
            self.bar.update(self.eval_task, completed=progress.done)
        elif self.mode == "plain" and now - self.eval_line_at >= EVAL_LINE_EVERY_S:
            self.eval_line_at = now
            self._plain(f"{progress.name} epoch {engine.state.epoch}: batch {progress.done}/{progress.total}, "
                        f"{now - self.eval_started:.0f} s")

    def _stop_eval_bar(self):
        if self.eval_task is not None:
            if self.eval_bar_owned:
                self._stop_bar()
            else:
                self.bar.remove_task(self.eval_task)
            self.eval_task = None

    def _start_bar(self, transient: bool) -> RichProgress:
        """A live bar. What is printed while it shows goes above it, and to train.log too."""
        bar = RichProgress(TextColumn("{task.description} {task.fields[epoch]}/{task.fields[epochs]}"),
                           BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                           TimeElapsedColumn(), console=self.console, transient=transient,
                           redirect_stdout=self.log is None, redirect_stderr=self.log is None)
        bar.start()
        if self.log is not None:
            self._saved_streams = sys.stdout, sys.stderr
            sys.stdout = _LoggedProxy(self.console, sys.stdout, self.log)
            sys.stderr = _LoggedProxy(self.console, sys.stderr, self.log)
        return bar

    def iter_end(self, engine):
        record = engine.state.reports.fresh(kinds.TRAIN)
        if self.mode == "rich":
            info = _train_text(record, breakdown=False) if record else None  # a bar row has no room
            self.bar.update(self.task, completed=engine.state.epoch_iter,
                            **({"info": info} if info else {}))
        if record:
            self._plain(f"epoch {record['epoch']} iter {record['epoch_iter']}/"
                        f"{engine.state.iters_per_epoch} " + _train_text(record))
        state = engine.state
        if state.iters_per_epoch and state.epoch_iter >= state.iters_per_epoch:
            self._stop_bar()  # the epoch's bar is full: its evaluation prints below it

    def epoch_end(self, engine):
        self._stop_bar()

    def eval_end(self, engine):
        self._stop_eval_bar()
        if self.mode == "off":
            return
        rec = engine.state.reports.latest(engine.state.evaluation.name)
        heads = "top1_cls" in rec  # a distilled model: each head alone, beside their mean
        self._plain(f"{rec['event']} epoch {rec['epoch']} iter {rec['iteration']}: top1 {rec['top1']:.4f} "
                    f"top5 {rec.get('top5', float('nan')):.4f} loss {rec['loss']:.4f} "
                    + (f"(class head {rec['top1_cls']:.4f}, distillation head {rec['top1_dist']:.4f}) " if heads else "")
                    + f"(best top1 {rec['best_top1']:.4f} at epoch {rec['best_epoch']})")
        if self.mode == "rich":
            rows = {"top-1": f"{rec['top1']:.2%}", "top-5": f"{rec.get('top5', float('nan')):.2%}"}
            if heads:
                rows.update({"top-1 class head": f"{rec['top1_cls']:.2%}",
                             "top-1 distillation head": f"{rec['top1_dist']:.2%}"})
            self.console.print(_table(f"{rec['event']} after epoch {rec['epoch']}", {
                **rows, "loss": f"{rec['loss']:.4f}", "images": str(rec["count"]),
                "best top-1": f"{rec['best_top1']:.2%} (epoch {rec['best_epoch']})"}))

    def completed(self, engine):
        self._stop_bar()  # the table goes below the last bar
        if self.mode == "off":
            return
        state = engine.state
        ev, tr = state.reports.latest(kinds.EVAL) or {}, state.reports.latest(kinds.TRAIN) or {}
        summary = {"epochs": str(state.epoch), "steps": str(state.iteration),
                   "time": f"{time.perf_counter() - self.start_time:.1f} s",
                   "train img/s": _fmt(tr.get("img_per_s_run"), ".1f")}
        if ev:
            summary.update({"final top-1": f"{ev['top1']:.2%}",
                            "best top-1": f"{ev['best_top1']:.2%} (epoch {ev['best_epoch']})"})
        self._plain("done: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
        if self.mode == "rich":
            self.console.print(_table("Training finished", summary))

    def _plain(self, line: str) -> None:
        """A plain-text line: printed in plain mode, else only sent to the log."""
        if self.mode == "plain":
            self.console.print(line)
        elif self.mode == "rich" and self.log is not None:
            self.log(line + "\n")

    def ended(self, engine):
        self.eval_task = None
        self._stop_bar()

    def _stop_bar(self):
        if self.bar is not None:
            if self._saved_streams is not None:
                sys.stdout.flush(), sys.stderr.flush()
                sys.stdout, sys.stderr = self._saved_streams
                self._saved_streams = None
            self.bar.stop()
            self.bar = None


class _LoggedProxy(FileProxy):
    """rich's stand-in for stdout/stderr while a bar is live (the text goes above the bar),
    which also hands the text to train.log."""

    def __init__(self, console, stream, log):
        super().__init__(console, stream)
        self._log_text = log

    def write(self, text: str) -> int:
        self._log_text(text)
        return super().write(text)


def _train_text(r, breakdown: bool = True) -> str:
    teacher = f" (teacher {r['teacher_fraction']:.0%})" if r.get("teacher_fraction") is not None else ""
    time = (f" data {r['time_data']:.0%} step {r['time_step']:.0%}"
            if breakdown and r.get("time_data") is not None else "")
    mfu = f" mfu {r['mfu']:.1%}" if breakdown and r.get("mfu") is not None else ""
    return (f"loss {r['loss']:.4f} lr {_fmt(r['lr'], '.3e')} img/s {_fmt(r['img_per_s'], '.1f')}{teacher}"
            f"{time}{mfu} eta {_fmt(r['eta_s'], '.0f')}s")


def _table(title: str, rows: dict) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(key, value)
    return table
