import pytest

from framework.core.errors import ConfigError
from framework.core.registry import Registry


class Widget:
    """A test component."""

    def __init__(self, in_channels: int, width: int = 8, scale: float = 1.0, mode: str = "a", tag: str | None = None):
        self.in_channels, self.width, self.scale, self.mode, self.tag = in_channels, width, scale, mode, tag


@pytest.fixture
def reg() -> Registry:
    r = Registry("encoder")
    r.register("widget")(Widget)
    return r


def test_build_with_kwargs_and_injected(reg):
    w = reg.build({"name": "widget", "width": 4, "scale": 2}, in_channels=3)
    assert (w.in_channels, w.width, w.scale) == (3, 4, 2)
    assert Widget.registered_name == "widget"


def test_duplicate_name_is_an_error(reg):
    with pytest.raises(ValueError, match="already registered"):
        reg.register("widget")(Widget)


def test_unknown_name_lists_names_and_closest_match(reg):
    reg.register("gadget")(Widget)
    with pytest.raises(ConfigError) as err:
        reg.get("widgte")
    msg = str(err.value)
    assert "did you mean 'widget'" in msg and "gadget, widget" in msg


def test_unknown_kwarg_names_key_and_valid_ones(reg):
    with pytest.raises(ConfigError) as err:
        reg.build({"name": "widget", "widht": 4}, in_channels=3)
    msg = str(err.value)
    assert "widht" in msg and "did you mean 'width'" in msg and "valid: width, scale, mode, tag" in msg


def test_injected_key_in_config_is_rejected(reg):
    with pytest.raises(ConfigError, match="set by the framework"):
        reg.build({"name": "widget", "in_channels": 4}, in_channels=3)


@pytest.mark.parametrize(
    "key,value,ok",
    [
        ("width", 4, True),
        ("width", "4", False),
        ("width", True, False),
        ("width", 4.5, False),
        ("scale", 3, True),
        ("scale", "x", False),
        ("tag", None, True),
        ("tag", "t", True),
        ("tag", 3, False),
        ("mode", None, False),
    ],
)
def test_type_checks(reg, key, value, ok):
    cfg = {"name": "widget", key: value}
    if ok:
        reg.check(cfg, {"in_channels": None})
    else:
        with pytest.raises(ConfigError, match=f"{key}: expected"):
            reg.check(cfg, {"in_channels": None})


def test_missing_required_and_missing_name(reg):
    with pytest.raises(ConfigError, match="needs in_channels"):
        reg.check({"name": "widget"})
    with pytest.raises(ConfigError, match="missing 'name'"):
        reg.check({"width": 3})


def test_parameters_listing(reg):
    params = {p.name: p for p in reg.parameters("widget", frozenset({"in_channels"}))}
    assert list(params) == ["width", "scale", "mode", "tag"]
    assert params["width"].default == 8 and params["width"].annotation == "int"


class Sized:
    """A component that refuses some values of the right type, and has a bug for one of them."""

    def __init__(self, width: int = 8) -> None:
        if width < 1:
            raise ValueError("width must be positive")
        if width == 13:
            raise KeyError("a bug")


def test_a_value_the_component_refuses_is_a_config_error_and_a_bug_keeps_its_type(reg):
    reg.register("sized")(Sized)
    with pytest.raises(ConfigError, match=r"^model.encoder: encoder 'sized' with width=0 cannot be built "
                                          r"\(ValueError: width must be positive\)$"):
        reg.build({"name": "sized", "width": 0}, where="model.encoder")
    with pytest.raises(KeyError, match="a bug"):
        reg.build({"name": "sized", "width": 13})
