"""The bundled configs: `demo.yaml` and PLSC's DeiT-B set under `plsc/`. `run.py -c demo.yaml`
finds them by name when no such file is in the current directory."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def bundled() -> list:
    return sorted(os.path.relpath(os.path.join(d, f), HERE)
                  for d, _, files in os.walk(HERE) for f in files if f.endswith(".yaml"))


def find_config(path: str) -> str:
    """`path` itself if it exists, else the bundled config of that name (`demo.yaml`, `demo`,
    `plsc/...yaml`, `configs/demo.yaml`); unchanged when neither exists, for load_config to
    report (the message lists the bundled names)."""
    if os.path.isfile(path):
        return path
    for name in (path, path + ".yaml"):
        candidate = os.path.join(HERE, name.removeprefix("configs/"))
        if os.path.isfile(candidate):
            return candidate
    return path
