"""DeiT components in plain Paddle: model, data, loss, optimizer, schedule. No engine imports."""
