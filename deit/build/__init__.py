"""The wiring: config -> components, hooks and engine (the one part of deit/ that sees all three)."""
