"""The NoC architecture grammar: parse, validate and print back the paper's notation.

A NoC string lists the layers of the region-wise classifier applied to RoI-pooled m x m maps,
in one of the paper's two styles (both print back unchanged):

* dash form (Tables 1-3, 5): ``f4096-f4096-f21``, ``c256-mo-c256-f4096-f4096-f21``,
  ``res5a,5b,5c-f81``;
* comma form (Tables 8, 9): ``fc4096, fc4096, fc81``, ``res5a,5b,5c, fc81``, ``fcn+1``.

Other spacing around separators is accepted and printed in the canonical form of its style.

Tokens
------
- ``f<N>`` or ``fc<N>``: fully connected layer with N outputs, + ReLU unless it is the classifier.
- ``fn+1`` or ``fcn+1``: the classifier with (classes + background) outputs, taken from the data
  set by ``NoCSpec.resolve(num_classes)``; only as the last layer.
- ``c<N>``: 3x3 conv with N filters, padding 1 (keeps m x m), + ReLU.
- ``c<N>k<K>``: K x K conv (K odd, padding K // 2), e.g. ``c256k1``.
- ``bn``: batch norm of the conv just before it (conv, bn, then ReLU).
- ``d<p>``: dropout with probability p in [0, 1), e.g. ``d0.5``.
- ``mo``: maxout, the element-wise max that merges the two pathways (two pyramid scales);
  every layer before it runs on both pathways with shared weights.
- ``res5a,5b,5c``: ResNet conv5 blocks (any consecutive run of res5a..res5c) as a conv NoC,
  followed by global average pooling.
- ``inc4e,5a,5b``: GoogLeNet inception blocks (a consecutive run of inc4a..inc4e, inc5a, inc5b),
  followed by global average pooling.
- ``eff7a,7b,7c,7d,8a,9a``: EfficientNet-Lite stages 7-9 (MBConv blocks eff7a.., eff8a, and the
  head conv eff9a; lite1/lite2 have eff7a..7e), followed by global average pooling.

Rules: the last layer (``mo`` aside) is the (n+1)-way classifier ``f<N>``; ``mo`` appears at most
once and may stand anywhere (first: max of the two pooled inputs; last: max of the two logits);
a stage comes first (after a leading ``mo`` at most); conv layers come before fc layers and not
after a stage (a stage ends with global average pooling); ``bn`` directly follows a conv.

Dropout
-------
The paper writes its NoCs without dropout (``f4096-f4096-f21``) but trained them as SPPnet trained
its fc head and as Fast/Faster R-CNN train theirs: dropout 0.5 after each hidden fc layer (fc6,
fc7). A string names the layers; the NoC-wide dropout rate is a training setting beside it
(``NoCHead(dropout=p)``, config ``noc.dropout``: 0.5 in the paper configs, 0 elsewhere). With a
rate p > 0, every hidden fc layer (an ``f<N>`` other than the classifier) that no explicit
``d<q>`` follows (a ``mo`` in between skipped; :meth:`NoCSpec.implicit_dropout`) gets dropout p
as the last step of the layer (Linear, ReLU, Dropout; with ``mo`` right after an fc, each pathway
is dropped before the max). So ``f4096-f4096-f21`` at rate 0.5 is the paper's network,
``f4096-d0.3-f4096-f21`` keeps 0.3 after the first fc and gets 0.5 after the second, and rate 0
leaves only the explicit tokens. Dropout acts in training only: the test-time network, its
parameters and its state-dict keys are the same at every rate.

New tokens: add a :class:`TokenRule` to ``TOKEN_RULES`` (and a builder in ``noc/head.py``).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from nocdet.errors import SpecError

KINDS = ("conv", "fc", "maxout", "stage", "dropout", "bn")

# Blocks that a stage token may name, per family, in network order (torchvision names in stages.py).
STAGE_BLOCKS: dict[str, tuple[str, ...]] = {
    "res": ("5a", "5b", "5c"),
    "inc": ("4a", "4b", "4c", "4d", "4e", "5a", "5b"),
    "eff": ("7a", "7b", "7c", "7d", "7e", "8a", "9a"),  # EfficientNet-Lite stages 7-9
}
#: families whose stage depth depends on the network (lite0 has eff7a..7d, lite1/2 eff7a..7e): the
#: parser checks the order of their blocks, the backbone (``Backbone.stage``) that none is skipped
VARIABLE_DEPTH_FAMILIES = frozenset({"eff"})
_STAGE_RE = re.compile(r"(res|inc|eff)(\d+[a-z]\d*)")
_BLOCK_RE = re.compile(r"\d+[a-z]\d*")
_SEP_RE = re.compile(r"\s*([-,])\s*")


@dataclass(frozen=True)
class TokenRule:
    """One token of the grammar: its pattern, how to read its parameters, and how to write it."""

    kind: str
    pattern: re.Pattern
    syntax: str  # shown in error messages
    hint: str  # a token starting with this is taken as a malformed attempt at this rule
    read: Callable[[re.Match], dict[str, Any]]
    check: Callable[[dict[str, Any]], str | None] = lambda params: None  # returns a complaint


def _read_fc(m: re.Match) -> dict[str, Any]:
    return {"out": None if m["out"] == "n+1" else int(m["out"])}


def _read_conv(m: re.Match) -> dict[str, Any]:
    return {"out": int(m["out"]), "kernel": int(m["k"]) if m["k"] else 3}


def _check_conv(p: dict[str, Any]) -> str | None:
    if p["out"] < 1:
        return "a conv layer needs at least 1 filter"
    if p["kernel"] < 1 or p["kernel"] % 2 == 0:
        return "the conv kernel must be odd (1, 3, 5, ...) so that m x m is kept"
    return None


def _check_fc(p: dict[str, Any]) -> str | None:
    return "an fc layer needs at least 1 output" if p["out"] is not None and p["out"] < 1 else None


def _check_dropout(p: dict[str, Any]) -> str | None:
    return None if 0.0 <= p["p"] < 1.0 else "the dropout probability must be in [0, 1)"


TOKEN_RULES: list[TokenRule] = [
    TokenRule("fc", re.compile(r"(?:fc|f)(?P<out>\d+|n\+1)"), "f<N>, fc<N>, fn+1 or fcn+1", "f",
              _read_fc, _check_fc),
    TokenRule("conv", re.compile(r"c(?P<out>\d+)(?:k(?P<k>\d+))?"), "c<N> or c<N>k<K>", "c",
              _read_conv, _check_conv),
    TokenRule("maxout", re.compile(r"mo"), "mo", "m", lambda m: {}),
    TokenRule("dropout", re.compile(r"d(?P<p>\d*\.?\d+)"), "d<p> (e.g. d0.5)", "d",
              lambda m: {"p": float(m["p"])}, _check_dropout),
    TokenRule("bn", re.compile(r"bn"), "bn", "b", lambda m: {}),
]
_EXPECTED = "f<N>, c<N>, mo, d<p>, bn, res5a,5b,5c, inc4e,5a,5b or eff7a,...,9a"


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a NoC. ``params`` by kind: fc ``out`` (None = n+1); conv ``out``, ``kernel``;
    dropout ``p``; stage ``family`` ("res"/"inc") and ``blocks`` (e.g. ("5a", "5b", "5c"));
    maxout, bn none. ``text`` is the token as written (a canonical spelling when left empty)."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SpecError(f"unknown layer kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not self.text:
            object.__setattr__(self, "text", _canonical_text(self.kind, self.params))

    @property
    def stage_names(self) -> list[str]:
        """Full block names of a stage, e.g. ``["res5a", "res5b", "res5c"]``."""
        return [self.params["family"] + b for b in self.params["blocks"]]

    def __str__(self) -> str:
        return self.text


def _canonical_text(kind: str, p: dict[str, Any]) -> str:
    if kind == "fc":
        return "fn+1" if p["out"] is None else f"f{p['out']}"
    if kind == "conv":
        return f"c{p['out']}" + ("" if p.get("kernel", 3) == 3 else f"k{p['kernel']}")
    if kind == "dropout":
        return f"d{p['p']:g}"
    if kind == "stage":
        return p["family"] + ",".join(p["blocks"])
    return {"maxout": "mo", "bn": "bn"}[kind]


@dataclass(frozen=True)
class NoCSpec:
    """A parsed NoC: its layers and the notation style ("dash" or "comma") to print them in."""

    layers: tuple[LayerSpec, ...]
    style: str = "dash"

    def __post_init__(self) -> None:
        """Validate specs built in code as strictly as parsed ones."""
        if self.style not in ("dash", "comma"):
            raise SpecError(f"unknown notation style {self.style!r}; expected 'dash' or 'comma'")
        object.__setattr__(self, "layers", tuple(self.layers))
        source, spans, pos = str(self), [], 0
        for layer in self.layers:
            spans.append((pos, pos + len(layer.text)))
            pos += len(layer.text) + (1 if self.style == "dash" else 2)
        checks = {rule.kind: rule.check for rule in TOKEN_RULES}
        for i, layer in enumerate(self.layers):
            complaint = checks.get(layer.kind, lambda params: None)(layer.params)
            if complaint:
                raise _error(source, *spans[i], f"token {i + 1} {layer.text!r}: {complaint}")
            if layer.kind == "stage":  # known, consecutive blocks
                _read_stage(source, _Token(layer.text, *spans[i], None), i + 1)
        _validate(source, spans, list(self.layers))

    def __str__(self) -> str:
        return ("-" if self.style == "dash" else ", ").join(layer.text for layer in self.layers)

    @property
    def has_maxout(self) -> bool:
        return self.maxout_index is not None

    @property
    def maxout_index(self) -> int | None:
        """Index of ``mo`` in ``layers`` (layers before it run on both pathways), or None."""
        return next((i for i, layer in enumerate(self.layers) if layer.kind == "maxout"), None)

    @property
    def classifier_index(self) -> int:
        """Index of the (n+1)-way classifier: the last layer other than ``mo``."""
        return max(i for i, layer in enumerate(self.layers) if layer.kind != "maxout")

    @property
    def classifier(self) -> LayerSpec:
        return self.layers[self.classifier_index]

    @property
    def num_outputs(self) -> int | None:
        """Outputs of the classifier (classes + background); None while written as n+1."""
        return self.classifier.params["out"]

    def implicit_dropout(self) -> tuple[int, ...]:
        """Indices of the hidden fc layers that a NoC-wide dropout rate applies to: every fc layer
        but the classifier whose next layer (``mo`` skipped) is not an explicit ``d<p>``."""
        cls = self.classifier_index
        after = [x for x in self.layers if x.kind != "maxout"]
        index = [i for i, x in enumerate(self.layers) if x.kind != "maxout"]
        return tuple(i for j, i in enumerate(index)
                     if self.layers[i].kind == "fc" and i != cls and after[j + 1].kind != "dropout")

    def without_maxout(self) -> NoCSpec:
        """The single-pathway twin: same layers and weights, no ``mo``."""
        return dataclasses.replace(self, layers=tuple(x for x in self.layers if x.kind != "maxout"))

    def check_classes(self, num_classes: int) -> None:
        """Raise SpecError unless the classifier has ``num_classes`` + 1 outputs (or is n+1)."""
        out = self.num_outputs
        if out is None or out == num_classes + 1:
            return
        prefix = "fc" if self.classifier.text.startswith("fc") else "f"
        raise SpecError(
            f"the classifier {self.classifier.text} has {out} outputs but the data set has "
            f"{num_classes} classes + background = {num_classes + 1}; "
            f"write {prefix}{num_classes + 1} or {prefix}n+1")

    def resolve(self, num_classes: int) -> NoCSpec:
        """The spec with ``fn+1`` replaced by ``f<num_classes + 1>`` (checked if already numeric)."""
        if num_classes < 1:
            raise SpecError(f"a data set needs at least 1 class, got {num_classes}")
        self.check_classes(num_classes)
        cls = self.classifier
        if cls.params["out"] is not None:
            return self
        new = LayerSpec("fc", {"out": num_classes + 1}, cls.text.replace("n+1", str(num_classes + 1)))
        layers = list(self.layers)
        layers[self.classifier_index] = new
        return dataclasses.replace(self, layers=tuple(layers))


@dataclass
class _Token:
    text: str
    start: int
    end: int
    sep_before: str | None  # "-" or "," (None for the first token)
    sep_at: int = 0  # position of that separator character


def _error(source: str, start: int, end: int, message: str) -> SpecError:
    caret = " " * start + "^" * max(1, end - start)
    return SpecError(f"invalid NoC {source!r}: {message}\n  {source}\n  {caret}")


def _split(text: str) -> list[_Token]:
    """Cut the string at separators, keeping each piece's position for error messages."""
    pieces, pos, sep, sep_at = [], 0, None, 0
    for m in _SEP_RE.finditer(text):
        pieces.append(_Token(text[pos:m.start()], pos, m.start(), sep, sep_at))
        pos, sep, sep_at = m.end(), m.group(1), m.start(1)
    pieces.append(_Token(text[pos:], pos, len(text), sep, sep_at))
    for i, p in enumerate(pieces):
        if not p.text:
            where = ("at the start" if i == 0 else "at the end" if i == len(pieces) - 1
                     else "between separators")
            raise _error(text, p.start, p.end + 1, f"empty token {where}; expected {_EXPECTED}")
    return pieces


def _group_stages(text: str, pieces: list[_Token]) -> list[_Token]:
    """Join ``res5a`` with the bare block names that follow it after commas (``5b``, ``5c``)."""
    groups: list[_Token] = []
    for p in pieces:
        if _BLOCK_RE.fullmatch(p.text):
            prev = groups[-1] if groups else None
            if prev is None or not _STAGE_RE.match(prev.text):
                raise _error(text, p.start, p.end, f"block {p.text!r} continues a stage list but no "
                             "res/inc stage precedes it (write e.g. res5a,5b,5c)")
            if p.sep_before != ",":
                raise _error(text, p.start, p.end, f"stage blocks are separated by ',' "
                             f"(write {prev.text},{p.text})")
            prev.text += "," + p.text
            prev.end = p.end
        else:
            groups.append(_Token(p.text, p.start, p.end, p.sep_before, p.sep_at))
    return groups


def _read_stage(source: str, tok: _Token, index: int) -> LayerSpec:
    family = tok.text[:3]
    if family not in STAGE_BLOCKS:
        raise _error(source, tok.start, tok.end, f"token {index} {tok.text!r}: unknown stage family "
                     f"{family!r}; known: {', '.join(STAGE_BLOCKS)}")
    blocks = tok.text[3:].split(",")
    known = STAGE_BLOCKS[family]
    offset = tok.start + 3
    for j, block in enumerate(blocks):
        start = offset - 3 if j == 0 else offset  # point at "res6a" or at "6a" in "res5a,6a"
        if block not in known:
            raise _error(source, start, offset + len(block), f"token {index} has unknown stage block "
                         f"{family}{block}; known {family} blocks: "
                         + ", ".join(family + b for b in known))
        step = known.index(block) - known.index(blocks[j - 1]) if j > 0 else 1
        if j > 0 and (step != 1 if family not in VARIABLE_DEPTH_FAMILIES else step < 1):
            prev = family + blocks[j - 1]
            want = known[known.index(blocks[j - 1]) + 1] if blocks[j - 1] != known[-1] else None
            expected = (f"expected {family}{want} after {prev}" if want
                        else f"{prev} is the last {family} block")
            raise _error(source, offset, offset + len(block),
                         f"stage blocks must be consecutive in network order: {expected}")
        offset += len(block) + 1
    return LayerSpec("stage", {"family": family, "blocks": tuple(blocks)}, tok.text)


def _read_token(source: str, tok: _Token, index: int) -> LayerSpec:
    if _STAGE_RE.match(tok.text):
        return _read_stage(source, tok, index)
    for rule in TOKEN_RULES:
        m = rule.pattern.fullmatch(tok.text)
        if m:
            params = rule.read(m)
            complaint = rule.check(params)
            if complaint:
                raise _error(source, tok.start, tok.end, f"token {index} {tok.text!r}: {complaint}")
            return LayerSpec(rule.kind, params, tok.text)
    if tok.text.startswith(tuple(STAGE_BLOCKS)):
        raise _error(source, tok.start, tok.end, f"token {index} {tok.text!r} is not a stage; "
                     "expected e.g. res5a,5b,5c, inc4e,5a,5b or eff7a,7b,7c,7d,8a,9a")
    rule = next((r for r in TOKEN_RULES if tok.text.startswith(r.hint)), None)
    if rule is not None:
        message = f"token {index} {tok.text!r} is malformed; expected {rule.syntax}"
    else:
        message = f"token {index} {tok.text!r} is not a layer; expected {_EXPECTED}"
    raise _error(source, tok.start, tok.end, message)


def _style(source: str, groups: list[_Token]) -> str:
    if len(groups) == 1:
        return "comma" if groups[0].text.startswith("fc") else "dash"
    first = groups[1].sep_before
    for g in groups[2:]:
        if g.sep_before != first:
            raise _error(source, g.sep_at, g.sep_at + 1, "the string mixes '-' and ',' between layers; "
                         "use one style (f4096-f4096-f21 or fc4096, fc4096, fc21)")
    return "dash" if first == "-" else "comma"


def _validate(source: str, spans: list[tuple[int, int]], layers: list[LayerSpec]) -> None:
    """The ordering rules of the module docstring; ``spans`` locate each layer in ``source``."""
    def fail(i: int, message: str) -> SpecError:
        return _error(source, *spans[i], f"token {i + 1} {layers[i].text!r}: {message}")

    seen_fc = seen_stage = seen_layer = False
    mo_at = None
    for i, layer in enumerate(layers):
        if layer.kind == "maxout":
            if mo_at is not None:
                raise fail(i, f"a second mo (the first is token {mo_at + 1}); maxout merges the two "
                           "pathways once, so a NoC has at most one mo")
            mo_at = i
            continue
        if layer.kind == "stage" and seen_layer:
            raise fail(i, "a stage must be the first layer (it takes the RoI-pooled map)")
        if layer.kind == "conv" and seen_fc:
            raise fail(i, "conv layer after an fc layer; conv layers work on m x m maps and "
                       "must come before the fc layers")
        if layer.kind == "conv" and seen_stage:
            raise fail(i, "conv layer after a stage; a stage ends with global average pooling")
        if layer.kind == "bn":
            if i == 0 or layers[i - 1].kind != "conv":
                raise fail(i, "bn must directly follow a conv layer (c<N>-bn)")
        seen_fc |= layer.kind == "fc"
        seen_stage |= layer.kind == "stage"
        seen_layer = True
    last = max((i for i, x in enumerate(layers) if x.kind != "maxout"), default=None)
    if last is None:
        raise _error(source, 0, len(source), "a NoC needs layers; the last one must be the "
                     "(n+1)-way classifier f<N> (e.g. f4096-f4096-f21)")
    if layers[last].kind != "fc":
        raise fail(last, "the last layer must be the (n+1)-way classifier f<N> (or fn+1)")
    for i, layer in enumerate(layers):
        if layer.kind == "fc" and layer.params["out"] is None and i != last:
            raise fail(i, "n+1 (classes + background) is only allowed for the classifier, the last layer")


def parse_noc(text: str) -> NoCSpec:
    """Parse a NoC string (dash or comma form) into a validated :class:`NoCSpec`."""
    if not isinstance(text, str):
        raise SpecError(f"a NoC string is a str, got {type(text).__name__}")
    source = text.strip()
    if not source:
        raise SpecError("empty NoC string; expected layers such as f4096-f4096-f21 or "
                        "c256-mo-c256-f4096-f4096-f21")
    groups = _group_stages(source, _split(source))
    layers = [_read_token(source, tok, i + 1) for i, tok in enumerate(groups)]
    style = _style(source, groups)
    _validate(source, [(g.start, g.end) for g in groups], layers)  # errors located in the input
    return NoCSpec(tuple(layers), style)


def as_spec(spec: str | NoCSpec) -> NoCSpec:
    """Accept either a NoC string or an already parsed spec."""
    return spec if isinstance(spec, NoCSpec) else parse_noc(spec)
