"""The kinds of record hooks put in `engine.state.reports`, in one place: who writes each, who
reads it, and its fields. grep a name to find every writer and reader.

Kind names are data (they are metrics.jsonl's `event` values), so they stay strings; these
constants keep them spelled once.
"""

# TrainMeter, every `print_batch_step` steps and at an epoch's end:
#   counters (epoch, iteration, epoch_iter, epochs_done), loss, lr, img_per_s,
#   img_per_s_per_device, img_per_s_run, data_fraction, step_time, eta_s, a {part}_fraction
#   per timed part of the step (teacher_fraction when distilling), the window's time shares
#   time_data, time_step, time_hooks, time_evaluation, time_checkpoint, time_other,
#   tflops_per_device, mfu, and under data parallel slowest_rank, slowest_step_time,
#   median_step_time. Read also by Bottleneck (the bound line).
# Read by GradScaler, MetricsLog, VisualDL, Progress, Checkpoint (report steps).
TRAIN = "train"

# GradScaler, a part of TRAIN (merged by `fresh(TRAIN, with_parts=True)`):
#   loss_scale, skipped_steps, skipped_in_window[, warning].
LOSS_SCALE = TRAIN + "/loss_scale"

# LRSchedule, every step: lr. Read by TrainMeter.
LR = "lr"

# Not a report: the `event` of metrics.jsonl's row for a resume that changed something, made by
# hooks/resume.py into engine.state.resumed.record and written by MetricsLog: counters, from,
# changes, world_size, and after an elastic resume global_batch, steps_per_epoch, lr.
RESUME = "resume"

# Evaluate, after each evaluation, under its name (EVAL, or EVAL_EMA for the EMA model):
#   counters, top1, top5, loss, count, best_top1, best_epoch, is_best, eval_time (and top1_cls,
#   top1_dist: a distilled model's heads alone).
# Read by Checkpoint (best.pdparams), MetricsLog, VisualDL, Progress.
EVAL = "eval"
EVAL_EMA = "eval_ema"

# EarlyStopping, at the evaluation that stops the run: event, counters, metric (e.g. top1), mode,
#   evaluation (eval or eval_ema), best, best_epoch, best_iteration, patience, min_delta, reason.
# Read by MetricsLog.
EARLY_STOP = "early_stop"

# DataHealth, at every epoch's end: skipped_files (unreadable images so far, all workers).
# Read by MetricsLog, which writes a row when any were skipped.
DATA_HEALTH = "data_health"
