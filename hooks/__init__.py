"""Training hooks, one concern per file. Default order (lower first): train meter 0,
NaN guard 1, LR schedule 10, grad scaler 15, EMA 20, eval 30, custom hooks 50, checkpoint 80,
metrics log 90, progress 95. Stateful hooks run before the checkpoint so it saves what they left."""
