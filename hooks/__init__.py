"""Training hooks, one concern per file. They know the engine, not DeiT: what they work on
(a model, an evaluation function, a loss scaler, a dataset's bad-file count) is handed to them.
They tell each other things through `state.reports`; their order is engine/priority.py."""
