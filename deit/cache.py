"""Where generated files that outlive a run go: the demo dataset, the compiled CPU kernels."""
import os


def cache_root() -> str:
    """$DEIT_CACHE, else ~/.cache/deit_paddle."""
    return os.environ.get("DEIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "deit_paddle")
