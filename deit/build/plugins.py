"""`Hooks:` entries of a config: a user's hook class found, checked and built, or one line that
says why not."""
import importlib
import inspect
import os
import sys

from engine import Hook

from ..errors import SetupError, unknown


def import_hook(dotted: str, kwargs: dict, where: str = "Hooks") -> Hook:
    """`my_hooks.StopAtLoss` -> an instance, or one line that names the hook and the real
    cause: its module not found, a package its module needs, a wrong argument, or whatever
    its constructor raised. Modules in the current directory are found, as with `python -m`."""
    module_name, _, cls_name = dotted.rpartition(".")
    if not module_name:
        raise SetupError(f"{where}: {dotted!r} must be module.ClassName (e.g. my_hooks.StopAtLoss)")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise SetupError(f"{where}: cannot find module {module_name!r} for {dotted}: put "
                             f"{module_name.replace('.', '/')}.py in the current directory or on "
                             f"PYTHONPATH") from None
        raise SetupError(f"{where}: {dotted}: its module imports {exc.name!r}, which is not installed "
                         f"(pip install it)") from None
    except Exception as exc:  # noqa: BLE001 - a broken module: say where
        raise SetupError(f"{where}: importing {module_name} for {dotted} failed: "
                         f"{type(exc).__name__}: {exc}") from None
    cls = getattr(module, cls_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Hook):
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Hook) and v is not Hook)
        raise SetupError(f"{where}: {module_name} has no Hook class {cls_name!r}"
                         f"{' (it has: ' + ', '.join(found) + ')' if found else ''}; a hook subclasses engine.Hook")
    signature = inspect.signature(cls)
    if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        for key in kwargs:
            if key not in signature.parameters:
                raise unknown(f"argument of {dotted} in {where}", key, list(signature.parameters))
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise SetupError(f"{where}: {dotted}: {exc} (its arguments: {signature})") from None
    try:
        return cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the hook's own check of its arguments
        raise SetupError(f"{where}: {dotted}({_kwargs_text(kwargs)}) failed: {type(exc).__name__}: {exc}") from None


def _kwargs_text(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
