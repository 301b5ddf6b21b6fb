"""The NoC grammar: every architecture string of the paper parses and prints back unchanged;
invalid strings fail with a message that points at the offending token."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nocdet.errors import SpecError
from nocdet.noc.spec import LayerSpec, NoCSpec, parse_noc

# Every NoC string in the paper's text (grep of noc-paper.txt). Figure 2's caption and Sec. 3.5
# also print "c256-mo-c256-f4096f4096-f21" and "c256mo-c256-..." where the PDF extraction lost a
# hyphen at a line break; those are the Table 3 string below.
PAPER_STRINGS = [
    # Table 1: MLP NoCs (ZF); Sec. 3.2 also names 2 fc layers
    "f4096-f21", "f4096-f4096-f21", "f4096-f4096-f4096-f21",
    # Table 2: ConvNet NoCs
    "c256-f4096-f4096-f21", "c256-c256-f4096-f4096-f21", "c256-c256-c256-f4096-f4096-f21",
    # Table 3: maxout NoCs (Table 4/5 reuse "maxout 2conv3fc")
    "mo-c256-c256-f4096-f4096-f21", "c256-mo-c256-f4096-f4096-f21",
    "c256-c256-f4096-mo-f4096-f21", "c256-c256-f4096-f4096-f21-mo",
    # Sec. 4 text
    "f4096-f4096-fc81",
    # Table 8: the naive 1fc NoC, MLP and conv NoCs
    "fc81", "fc4096, fc4096, fc81", "res5a,5b,5c, fc81", "inc4e,5a,5b, fc81",
    # Table 9
    "fc4096, fc4096, fcn+1", "res5a,5b,5c, fcn+1",
    # the dash form of a stage NoC
    "res5a,5b,5c-f81",
]


@pytest.mark.parametrize("text", PAPER_STRINGS)
def test_paper_strings_round_trip(text):
    spec = parse_noc(text)
    assert str(spec) == text
    assert parse_noc(str(spec)) == spec


def test_layers_of_a_maxout_noc():
    spec = parse_noc("c256-mo-c256-f4096-f4096-f21")
    assert [x.kind for x in spec.layers] == ["conv", "maxout", "conv", "fc", "fc", "fc"]
    assert spec.layers[0].params == {"out": 256, "kernel": 3}
    assert [x.params["out"] for x in spec.layers[3:]] == [4096, 4096, 21]
    assert spec.has_maxout and spec.maxout_index == 1
    assert spec.num_outputs == 21 and spec.style == "dash"


def test_comma_form_and_stages():
    spec = parse_noc("res5a,5b,5c, fcn+1")
    assert spec.style == "comma"
    assert [x.kind for x in spec.layers] == ["stage", "fc"]
    assert spec.layers[0].params == {"family": "res", "blocks": ("5a", "5b", "5c")}
    assert spec.layers[0].stage_names == ["res5a", "res5b", "res5c"]
    assert spec.num_outputs is None and not spec.has_maxout and spec.maxout_index is None
    inc = parse_noc("inc4e,5a,5b, fc81").layers[0]
    assert inc.stage_names == ["inc4e", "inc5a", "inc5b"]


@pytest.mark.parametrize("text, resolved", [
    ("fc4096, fc4096, fcn+1", "fc4096, fc4096, fc81"),
    ("res5a,5b,5c, fcn+1", "res5a,5b,5c, fc81"),
    ("c256-fn+1", "c256-f81"),
])
def test_resolve_n_plus_1(text, resolved):
    spec = parse_noc(text).resolve(80)
    assert str(spec) == resolved and spec.num_outputs == 81


def test_resolve_keeps_a_matching_numeric_classifier_and_rejects_a_wrong_one():
    spec = parse_noc("f4096-f4096-f21")
    assert spec.resolve(20) == spec
    with pytest.raises(SpecError) as err:
        spec.resolve(10)
    assert str(err.value) == ("the classifier f21 has 21 outputs but the data set has 10 classes + "
                              "background = 11; write f11 or fn+1")


def test_check_classes_message_uses_the_comma_spelling():
    with pytest.raises(SpecError, match=r"write fc21 or fcn\+1"):
        parse_noc("fc4096, fc4096, fc81").check_classes(20)
    parse_noc("fc4096, fc4096, fc81").check_classes(80)
    parse_noc("fcn+1").check_classes(3)


@pytest.mark.parametrize("text, twin", [
    ("c256-mo-c256-f4096-f4096-f21", "c256-c256-f4096-f4096-f21"),
    ("mo-c256-c256-f4096-f4096-f21", "c256-c256-f4096-f4096-f21"),
    ("c256-c256-f4096-f4096-f21-mo", "c256-c256-f4096-f4096-f21"),
    ("f4096-f4096-f21", "f4096-f4096-f21"),
])
def test_without_maxout(text, twin):
    assert str(parse_noc(text).without_maxout()) == twin


def test_extra_tokens():
    spec = parse_noc("c256k1-bn-c128-d0.5-f1024-d0.25-f21")
    assert [(x.kind, x.params) for x in spec.layers] == [
        ("conv", {"out": 256, "kernel": 1}), ("bn", {}), ("conv", {"out": 128, "kernel": 3}),
        ("dropout", {"p": 0.5}), ("fc", {"out": 1024}), ("dropout", {"p": 0.25}), ("fc", {"out": 21})]
    assert str(spec) == "c256k1-bn-c128-d0.5-f1024-d0.25-f21"


@pytest.mark.parametrize("text, canonical", [
    ("fc4096,fc4096,fc81", "fc4096, fc4096, fc81"),
    ("  f4096 - f21 ", "f4096-f21"),
    ("res5a, 5b, 5c,  fc81", "res5a,5b,5c, fc81"),
])
def test_other_spacing_prints_canonically(text, canonical):
    assert str(parse_noc(text)) == canonical


def test_programmatic_specs_print_canonically():
    layers = (LayerSpec("conv", {"out": 64, "kernel": 1}), LayerSpec("maxout"),
              LayerSpec("dropout", {"p": 0.5}), LayerSpec("fc", {"out": None}))
    assert str(NoCSpec(layers)) == "c64k1-mo-d0.5-fn+1"
    assert str(NoCSpec(layers, style="comma")) == "c64k1, mo, d0.5, fn+1"
    assert LayerSpec("stage", {"family": "inc", "blocks": ("4e", "5a")}).text == "inc4e,5a"
    with pytest.raises(SpecError, match="unknown layer kind"):
        LayerSpec("pool")


@pytest.mark.parametrize("layers, message", [
    ((), "a NoC needs layers"),
    ((LayerSpec("fc", {"out": 8}), LayerSpec("conv", {"out": 4, "kernel": 3}), LayerSpec("fc", {"out": 3})),
     "conv layer after an fc layer"),
    ((LayerSpec("conv", {"out": 4, "kernel": 2}), LayerSpec("fc", {"out": 3})), "the conv kernel must be odd"),
    ((LayerSpec("maxout"), LayerSpec("maxout"), LayerSpec("fc", {"out": 3})), "at most one mo"),
    ((LayerSpec("stage", {"family": "res", "blocks": ("5a", "6a")}), LayerSpec("fc", {"out": 3})),
     "unknown stage block res6a"),
])
def test_programmatic_specs_are_validated(layers, message):
    with pytest.raises(SpecError, match=message):
        NoCSpec(layers)


# (string, fragment of the message, caret line under the string)
INVALID = [
    ("f", "token 1 'f' is malformed; expected f<N>, fc<N>, fn+1 or fcn+1", "^"),
    ("c0-f21", "token 1 'c0': a conv layer needs at least 1 filter", "^^"),
    ("c256-x256-f21", "token 2 'x256' is not a layer; expected f<N>, c<N>, mo", "     ^^^^"),
    ("mo-mo-c256-f21", "token 2 'mo': a second mo (the first is token 1)", "   ^^"),
    ("c256-mo-f4096-mo-f21", "at most one mo", "              ^^"),
    ("res6a,6b-f81", "unknown stage block res6a; known res blocks: res5a, res5b, res5c", "^^^^^"),
    ("res5a,5c-f81", "consecutive in network order: expected res5b after res5a", "      ^^"),
    ("c256-res5a,5b,5c-f81", "token 2 'res5a,5b,5c': a stage must be the first layer", "     ^^^^^^^^^^^"),
    ("f4096-c256-f21", "token 2 'c256': conv layer after an fc layer", "      ^^^^"),
    ("res5a,5b,5c-c256-f81", "conv layer after a stage; a stage ends with global average pooling",
     "            ^^^^"),
    ("c256-c256", "token 2 'c256': the last layer must be the (n+1)-way classifier", "     ^^^^"),
    ("f21-d0.5", "token 2 'd0.5': the last layer must be the (n+1)-way classifier", "    ^^^^"),
    ("mo", "a NoC needs layers", "^^"),
    ("f21--f21", "empty token between separators", "    ^"),
    ("f21-", "empty token at the end", "    ^"),
    ("-f21", "empty token at the start", "^"),
    ("fc4096-fc4096, fc81", "mixes '-' and ','", "             ^"),
    ("5b-f21", "block '5b' continues a stage list but no res/inc stage precedes it", "^^"),
    ("res5a-5b-f81", "stage blocks are separated by ','", "      ^^"),
    ("bn-f21", "token 1 'bn': bn must directly follow a conv layer", "^^"),
    ("c256-f4096-bn-f21", "bn must directly follow a conv layer", "           ^^"),
    ("c256k2-f21", "the conv kernel must be odd", "^^^^^^"),
    ("d1.5-f21", "the dropout probability must be in [0, 1)", "^^^^"),
    ("fn+1-f21", "n+1 (classes + background) is only allowed for the classifier", "^^^^"),
    ("f0", "an fc layer needs at least 1 output", "^^"),
    ("resnet-f21", "token 1 'resnet' is not a stage", "^^^^^^"),
    ("mop-f21", "token 1 'mop' is malformed; expected mo", "^^^"),
]


@pytest.mark.parametrize("text, fragment, caret", INVALID)
def test_invalid_strings(text, fragment, caret):
    with pytest.raises(SpecError) as err:
        parse_noc(text)
    message = str(err.value)
    assert fragment in message
    first, shown, marks = message.split("\n")
    assert first.startswith(f"invalid NoC {text!r}: ")
    assert shown == "  " + text
    assert marks == "  " + caret


def test_f4096_f4096_is_valid_its_last_fc_is_the_classifier():
    assert parse_noc("f4096-f4096").num_outputs == 4096


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_string(text):
    with pytest.raises(SpecError, match="empty NoC string"):
        parse_noc(text)


def test_non_string():
    with pytest.raises(SpecError, match="a NoC string is a str"):
        parse_noc(None)


# --- property: any valid layer list prints and parses back to itself --------------------------

@st.composite
def valid_specs(draw):
    layers = []
    if draw(st.booleans()):
        family = draw(st.sampled_from(["res", "inc"]))
        known = {"res": ["5a", "5b", "5c"], "inc": ["4a", "4b", "4c", "4d", "4e", "5a", "5b"]}[family]
        start = draw(st.integers(0, len(known) - 1))
        stop = draw(st.integers(start + 1, len(known)))
        layers.append(LayerSpec("stage", {"family": family, "blocks": tuple(known[start:stop])}))
    else:
        for _ in range(draw(st.integers(0, 3))):
            layers.append(LayerSpec("conv", {"out": draw(st.integers(1, 512)),
                                             "kernel": draw(st.sampled_from([1, 3, 5]))}))
            if draw(st.booleans()):
                layers.append(LayerSpec("bn"))
    for _ in range(draw(st.integers(0, 3))):
        layers.append(LayerSpec("fc", {"out": draw(st.integers(1, 4096))}))
        if draw(st.booleans()):
            layers.append(LayerSpec("dropout", {"p": draw(st.sampled_from([0.0, 0.1, 0.5, 0.75]))}))
    layers.append(LayerSpec("fc", {"out": draw(st.one_of(st.none(), st.integers(1, 100)))}))
    if draw(st.booleans()):
        spots = [i for i in range(len(layers) + 1) if i == len(layers) or layers[i].kind != "bn"]
        layers.insert(draw(st.sampled_from(spots)), LayerSpec("maxout"))  # not between conv and bn
    return NoCSpec(tuple(layers), draw(st.sampled_from(["dash", "comma"])))


@settings(max_examples=200, deadline=None)
@given(valid_specs())
def test_generated_specs_round_trip(spec):
    parsed = parse_noc(str(spec))
    assert parsed.layers == spec.layers
    assert str(parsed) == str(spec)
    if len(spec.layers) > 1:
        assert parsed.style == spec.style
