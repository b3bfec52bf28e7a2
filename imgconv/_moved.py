"""Old names kept working after a move: a module ``__getattr__`` that finds them at their new home.

Each use warns (DeprecationWarning) and names the new place, so code written
against an older layout keeps running and says what to change.
"""
import importlib
import warnings
from typing import Any, Callable, Mapping


def forward(module_name: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A ``__getattr__`` for module ``module_name``: ``moved`` maps each old name to its new home.

    A home is a module ("imgconv.kernels") holding the name, or "module:attribute"
    when the name changed too. Other names raise AttributeError as usual.
    """

    def __getattr__(name: str) -> Any:
        try:
            home = moved[name]
        except KeyError:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}") from None
        module, _, attribute = home.partition(":")
        attribute = attribute or name
        warnings.warn(f"{module_name}.{name} has moved: use {module}.{attribute}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), attribute)

    return __getattr__
