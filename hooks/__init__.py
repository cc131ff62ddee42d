"""Training hooks, one concern per file. Default order (lower first): train meter 0,
LR schedule 10, grad scaler 15, EMA 20, eval 30, checkpoint 40, metrics log 90, progress 95."""
