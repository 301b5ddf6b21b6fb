"""Pre-trained weights for the backbones: torchvision's ImageNet weights, a local checkpoint, or none.

A ``weights`` value is one of

- ``None`` or ``"random"``: keep the random initialisation;
- ``"imagenet"`` (torchvision's default weights of that net) or ``"imagenet:<ENUM>"`` (a named
  member of its weights enum, e.g. ``"imagenet:IMAGENET1K_V1"``): the file of the torch hub cache,
  ``torch.hub.get_dir()/checkpoints/<file name of the enum's url>`` (``$TORCH_HOME/hub/checkpoints``).
  When it is missing, nocdet downloads it there as torchvision does (``torch.hub.download_url_to_file``
  with the SHA-256 prefix of the file name checked): torch.hub writes to a ``<file>.<uuid>.partial``
  temporary file next to it and moves it into place only once complete and verified, so an
  interrupted or corrupt download never becomes the cached file. When the download fails (no
  network, HTTP error, hash mismatch) a DataError names the file, the URL and how to place the file
  by hand. Set the environment variable ``NOCDET_OFFLINE=1`` to never try the network: a missing
  file is then that error at once;
- a path to a local checkpoint file (see :func:`load_checkpoint_state_dict` for its format).

A checkpoint that does not fit the network is refused with the keys that are missing, the keys
that are left over and the tensors whose shapes differ, never loaded half-way.

ZF's pre-trained weights exist only as Caffe models, and a plain conversion of one loads without
error and computes wrong features (BGR input, possibly SPPnet's padding). So a ``zf`` backbone
refuses a bare state dict file: it takes a ``nocdet convert-caffe`` file (whose record of the
conversion is checked and whose input convention is applied, :mod:`nocdet.features.caffe_zf`) or a
checkpoint nocdet wrote (``{"backbone": ...}``, ``{"model": ...}``).
"""
from __future__ import annotations

import http.client
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_model_weights

from nocdet.errors import ConfigError, DataError
from nocdet.features.caffe_record import CONVERSION_KEY, conversion_normalisation

IMAGENET = "imagenet"
OFFLINE_ENV = "NOCDET_OFFLINE"  # "1" (or true/yes/on): never download, a missing hub file is an error
_HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's: "resnet50-11ad3fa6.pth" -> "11ad3fa6"
_SHOWN_KEYS = 8  # how many keys an error message lists before "... and N more"
#: backbones whose pre-trained weights exist only as Caffe models: a bare state dict file is refused
CAFFE_ONLY_BACKBONES = ("zf",)


class CheckpointState(dict):
    """A state dict read from a checkpoint file, with how the file held it.

    ``layout``: ``"plain"`` (a bare state dict), ``"backbone"``, ``"model"`` or ``"caffe"`` (a
    ``nocdet convert-caffe`` file); ``caffe``: that file's record of the conversion, else None.
    """

    def __init__(self, tensors: Mapping[str, Tensor], layout: str, caffe: Mapping[str, object] | None = None):
        super().__init__(tensors)
        self.layout = layout
        self.caffe = caffe


def is_random(weights: str | Path | None) -> bool:
    """True for the values that mean "no pre-trained weights"."""
    return weights is None or (isinstance(weights, str) and weights.lower() == "random")


def is_imagenet(weights: str | Path | None) -> bool:
    """True for ``"imagenet"`` and ``"imagenet:<ENUM>"``."""
    return isinstance(weights, str) and (weights.lower() == IMAGENET or weights.lower().startswith(IMAGENET + ":"))


def imagenet_weights(arch: str, weights: str = IMAGENET) -> WeightsEnum:
    """torchvision's weights enum member for ``arch`` named by ``"imagenet"`` or ``"imagenet:<ENUM>"``."""
    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError) as error:
        raise ConfigError(f"torchvision has no weights for {arch!r}") from error
    _, _, variant = weights.partition(":")
    if not variant:
        return enum.DEFAULT
    members = {member.name.upper(): member for member in enum}
    if variant.upper() not in members:
        raise ConfigError(f"unknown weights {weights!r} for {arch}; torchvision has "
                          + ", ".join(f"imagenet:{name}" for name in members))
    return members[variant.upper()]


def hub_checkpoint_path(weights: WeightsEnum) -> Path:
    """Where torchvision caches the file of ``weights``: ``<hub dir>/checkpoints/<url file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def is_offline() -> bool:
    """True when ``NOCDET_OFFLINE`` asks nocdet never to download (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def load_imagenet_state_dict(arch: str, weights: str = IMAGENET) -> dict[str, Tensor]:
    """torchvision's pre-trained state dict of ``arch`` from the torch hub cache, downloaded there if missing.

    The download is torchvision's own (``torch.hub.download_url_to_file`` into
    ``<hub dir>/checkpoints`` with the file name's hash prefix checked, as
    ``member.get_state_dict(check_hash=True)`` does); a failed one leaves no file behind. With
    ``NOCDET_OFFLINE=1`` a missing file raises at once. Raises DataError naming the file and URL.
    """
    member = imagenet_weights(arch, weights)
    path = hub_checkpoint_path(member)
    if not path.is_file():
        if is_offline():
            raise DataError(f"the {arch} ImageNet weights ({type(member).__name__}.{member.name}) are not in "
                            f"the local torch hub cache and {OFFLINE_ENV}={os.environ[OFFLINE_ENV]} forbids "
                            f"downloading them from {member.url}. " + _place_by_hand(arch, member, path),
                            path=path)
        _download(arch, member, path)
    return _tensor_dict(_torch_load(path), path)


def _download(arch: str, member: WeightsEnum, path: Path) -> None:
    """Fetch ``member.url`` to ``path`` the way torch.hub does (temporary file, hash check, move)."""
    match = _HASH_REGEX.search(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(member.url, str(path), match.group(1) if match else None, progress=True)
    except (OSError, RuntimeError, ValueError, http.client.HTTPException) as error:
        # URLError and HTTPError are OSErrors; torch.hub reports a hash mismatch as a RuntimeError
        raise DataError(f"the {arch} ImageNet weights ({type(member).__name__}.{member.name}) are not in the "
                        f"local torch hub cache and downloading them from {member.url} failed "
                        f"({type(error).__name__}: {error}). " + _place_by_hand(arch, member, path),
                        path=path) from error


def _place_by_hand(arch: str, member: WeightsEnum, path: Path) -> str:
    return (f"To place the file by hand, on a machine with internet run\n"
            f"    python -c \"import torchvision; torchvision.models.{arch}(weights='{member.name}')\"\n"
            f"then copy {path.name} from that machine's torch hub 'checkpoints' folder to {path.parent}/ "
            f"(or point TORCH_HOME at a folder whose 'hub/checkpoints' holds it), "
            f"or pass the file's path as the weights instead of 'imagenet'.")


def load_checkpoint_state_dict(path: str | Path) -> CheckpointState:
    """The backbone state dict stored in a local checkpoint file.

    Accepted layouts (a ``"module."`` prefix left by DistributedDataParallel is removed):

    - a plain state dict ``{name: tensor}``: torchvision's layout for the torchvision nets
      (``torch.save(model.state_dict())``), or a :class:`Backbone`'s own ``state_dict()``
      (not for ``zf``: wrap it as ``{"backbone": state_dict}``, see the module doc);
    - ``{"backbone": state_dict, ...}``: a nocdet pre-training checkpoint; the other entries
      (optimiser, iteration, config) are ignored. With a ``"caffe_conversion"`` entry: a
      ``nocdet convert-caffe`` file;
    - ``{"model": state_dict, ...}``: a whole-model checkpoint; when some of its keys start with
      ``"backbone."`` only those are taken (prefix removed), otherwise the whole dict is used.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such checkpoint file (weights must be 'random', 'imagenet', "
                        "'imagenet:<ENUM>' or the path of a checkpoint)", path=path)
    content = _torch_load(path)
    if isinstance(content, Mapping) and "backbone" in content and isinstance(content["backbone"], Mapping):
        tensors = _tensor_dict(content["backbone"], path, record="backbone")
        caffe = content.get(CONVERSION_KEY)
        if caffe is None:
            return CheckpointState(tensors, "backbone")
        if not isinstance(caffe, Mapping):
            raise DataError(f"the '{CONVERSION_KEY}' entry is a {type(caffe).__name__}, not a record",
                            path=path, record=CONVERSION_KEY)
        return CheckpointState(tensors, "caffe", caffe)
    if isinstance(content, Mapping) and "model" in content and isinstance(content["model"], Mapping):
        model = _tensor_dict(content["model"], path, record="model")
        prefixed = {k[len("backbone."):]: v for k, v in model.items() if k.startswith("backbone.")}
        return CheckpointState(prefixed or model, "model")
    return CheckpointState(_tensor_dict(content, path), "plain")


def load_state_dict_checked(module: nn.Module, state_dict: Mapping[str, Tensor], source: str | Path, *,
                            ignored_prefixes: Iterable[str] = (), optional_prefixes: Iterable[str] = ()
                            ) -> set[str]:
    """Load ``state_dict`` into ``module`` after checking that it fits; return the loaded keys.

    ``ignored_prefixes``: checkpoint keys dropped silently (the ImageNet classifier ``fc.``, ...).
    ``optional_prefixes``: groups of module keys a checkpoint may leave out entirely (fc6/fc7 under
    ``classifier.``), but not in part. ``num_batches_tracked`` counters are never required, so
    BatchNorm and FrozenBatchNorm2d checkpoints load into each other.
    A :class:`CheckpointState` from a ``nocdet convert-caffe`` file also sets the module's input
    normalisation (``mean``/``std``) from the file's record; one holding a bare ZF state dict is
    refused (see the module doc).
    Raises DataError naming ``source`` and listing missing, unexpected and mis-shaped keys.
    """
    normalisation = _caffe_origin_check(module, state_dict, source)
    ignored, optional = tuple(ignored_prefixes), tuple(optional_prefixes)
    state_dict = _strip_prefix(state_dict, "module.")
    expected = module.state_dict()

    def counter(key: str) -> bool:
        return key.endswith("num_batches_tracked")

    unexpected = [k for k in state_dict if k not in expected and not k.startswith(ignored) and not counter(k)]
    missing = [k for k in expected if k not in state_dict and not counter(k)]
    for prefix in optional:
        group = [k for k in expected if k.startswith(prefix) and not counter(k)]
        if all(k in missing for k in group):
            missing = [k for k in missing if not k.startswith(prefix)]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs network {tuple(expected[k].shape)}"
                  for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"the checkpoint does not fit {type(module).__name__}"]
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", mismatched)):
            if keys:
                parts.append(f"{label} ({len(keys)}): {_shorten(keys)}")
        raise DataError("; ".join(parts), path=source)
    loadable = {k: v for k, v in state_dict.items() if k in expected}
    module.load_state_dict(loadable, strict=False)
    if normalisation is not None:
        module.mean, module.std = normalisation
    return set(loadable)


def _caffe_origin_check(module: nn.Module, state_dict: Mapping[str, Tensor], source: str | Path
                        ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) a converted Caffe model prescribes; a refusal for a bare ZF state dict file."""
    arch = getattr(module, "name", None)
    caffe = getattr(state_dict, "caffe", None)
    if caffe is not None:

        return conversion_normalisation(caffe, arch, source)
    if arch in CAFFE_ONLY_BACKBONES and getattr(state_dict, "layout", None) == "plain":
        raise DataError(f"a bare state dict for {arch!r} is refused: it cannot be told apart from a plain "
                        f"conversion of a Caffe model, which loads without error and computes wrong features "
                        f"(Caffe's BGR channel order; SPPnet's padding). Convert the caffemodel with "
                        f"`nocdet convert-caffe MODEL.caffemodel --arch zf --out zf.pt` (docs/zf_weights.md); "
                        f"if this file holds weights nocdet trained, save them as {{'backbone': state_dict}}",
                        path=source)
    return None


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors all mean "not a usable checkpoint"
        raise DataError(f"cannot read the checkpoint: {error}", path=path) from error


def _tensor_dict(content: object, path: Path, record: str | None = None) -> dict[str, Tensor]:
    if not isinstance(content, Mapping) or not content:
        raise DataError(f"expected a state dict {{name: tensor}} or a checkpoint with a 'backbone' or 'model' "
                        f"entry, got {type(content).__name__}", path=path, record=record)
    bad = [str(k) for k, v in content.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        found = _shorten([str(k) for k in content])
        raise DataError(f"expected a state dict {{name: tensor}} or a checkpoint with a 'backbone' or 'model' "
                        f"entry; entries that are not tensors: {_shorten(bad)} (keys found: {found})",
                        path=path, record=record)
    return dict(content)


def _strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _shorten(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f", ... and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")
