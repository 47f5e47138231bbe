"""The MPP fallback chain on hand-written OpenSlide-style properties (values checked by hand)."""

import pytest
from domainfm.errors import DataError
from domainfm.pathology.mpp import magnification, mpp_from_properties, resolve_mpp


def test_openslide_mpp_comes_first():
    assert mpp_from_properties({"openslide.mpp-x": "0.2527", "aperio.MPP": "0.5"}) == (0.2527, "openslide.mpp-x")


def test_vendor_key_when_openslide_has_none():
    assert mpp_from_properties({"aperio.MPP": "0.4990"}) == (0.499, "aperio.MPP")
    mirax = {"mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X": "0.243094"}
    assert mpp_from_properties(mirax)[0] == 0.2431


def test_tiff_resolution_tags_in_centimetre_and_inch():
    # 20000 px/cm = 0.5 um/px; 101600 px/inch = 25400 / 101600 = 0.25 um/px
    assert mpp_from_properties({"tiff.XResolution": "20000", "tiff.ResolutionUnit": "centimeter"}) == (
        0.5,
        "tiff.XResolution",
    )
    assert mpp_from_properties({"tiff.XResolution": "101600", "tiff.ResolutionUnit": "inch"})[0] == 0.25


def test_implausible_values_are_ignored():
    # 72 dpi (a writer's default) would be 352.8 um/px; a zero or non-number is no MPP either
    assert mpp_from_properties({"tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"}) == (None, None)
    assert mpp_from_properties({"openslide.mpp-x": "0", "aperio.MPP": "abc"}) == (None, None)
    assert mpp_from_properties({"tiff.XResolution": "20000", "tiff.ResolutionUnit": "none"}) == (None, None)


def test_override_only_when_metadata_has_none():
    assert resolve_mpp("a.svs", 0.499, "aperio.MPP", override=0.25) == (0.499, "aperio.MPP")
    assert resolve_mpp("a.svs", None, None, override=0.25) == (0.25, "override")


def test_missing_mpp_error_names_slide_and_both_overrides():
    with pytest.raises(DataError) as err:
        resolve_mpp("/data/b.tif", None, None, override=None)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("/data/b.tif:") and "data.mpp=" in message and "'mpp' column" in message


def test_magnification_bins_as_trident():
    assert [magnification(m) for m in (0.12, 0.18, 0.25, 0.499, 1.0, 2.0)] == [80, 60, 40, 20, 10, 5]
    assert magnification(4.0, objective_power="2.5") == 2
    assert magnification(4.0) == 2  # round(10 / 4) = 2 (rounds half to even)
