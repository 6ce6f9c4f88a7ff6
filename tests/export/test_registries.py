"""The registries agree with each other: every format's backend runs that format, every flavour's verify backends
exist, and the CLI offers exactly what the registries hold (its choices are derived, never listed)."""

from __future__ import annotations

from click.testing import CliRunner

from mahia.calibration.recipes import RECIPES, method_choices
from mahia.export.cli import main
from mahia.export.flavours import flavours
from mahia.export.formats import formats
from mahia.export.precisions import precisions
from mahia.runtime.backends import backends, get_backend


def test_every_format_is_deployed_and_verified_by_registered_backends() -> None:
    for fmt in formats().values():
        if fmt.backend is None:  # an engine no backend here runs (rtx-engine: built, not run here)
            assert fmt.save is None and fmt.engine_of in formats() and fmt.verify_backends() == ()
            continue
        assert get_backend(fmt.backend).format == fmt.name
        for backend in fmt.verify_backends():
            assert get_backend(backend).format == fmt.name
    for flavour in flavours().values():
        assert all(name in backends() for name in flavour.verify_backends)
        assert any(fmt.flavour == flavour.name for fmt in formats().values()), f"no format writes {flavour.name}"


def test_every_quantized_precision_names_its_recipe() -> None:
    quantized = {p.name: p.recipe for p in precisions().values() if p.recipe is not None}
    assert quantized == dict(RECIPES)
    assert all(p.stage_name == ("quantize" if p.recipe else "build") for p in precisions().values())
    assert all(set(p.formats) <= set(formats()) for p in precisions().values())


def test_the_cli_offers_what_the_registries_hold() -> None:
    help_text = CliRunner().invoke(main, ["--help"]).output
    choices = "[" + "|".join(method_choices()) + "]"
    assert "".join(choices.split()) in "".join(help_text.split())
    assert set(method_choices()) == {m for recipe in RECIPES.values() for m in recipe.methods()}
    for fmt in formats():
        assert fmt in help_text
