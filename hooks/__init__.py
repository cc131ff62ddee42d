"""Training hooks, one concern per file. Default order (lower first), and why:
train meter 0 (times the step before anything else runs), NaN guard 1 (stops a diverged run
before anything saves it), LR schedule 10, grad scaler 15, EMA 20, eval 30, custom hooks 50
(stateful hooks run before the checkpoint, so it saves what they left), data health 80,
metrics log 85 (writes the step's rows before the checkpoint records the log's length),
VisualDL 86,
checkpoint 90, progress 95 (display only)."""
