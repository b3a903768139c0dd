"""The options module is the one source of truth for presets, validation and the schema."""

from __future__ import annotations

import pytest

from pipelines.errors import InvalidOptions
from pipelines.options import PRESETS, build_options, option_keys, options_schema, options_to_dict


def test_every_preset_builds_and_differs_from_balanced() -> None:
    balanced = options_to_dict(build_options("balanced"))
    for name in PRESETS:
        flat = options_to_dict(build_options(name))
        assert set(flat) == set(balanced)
        if name != "balanced":
            assert flat != balanced


def test_overrides_are_coerced_from_command_line_strings() -> None:
    options = build_options("preview", {"dense.num_source_views": "5", "texture.enabled": "false"})
    assert options.dense.num_source_views == 5
    assert options.texture.enabled is False
    assert options.preset == "preview"


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        ({"dense.nope": 1}, "dense.nope", "unknown option"),
        ({"nope": 1}, "nope", "unknown option"),
        ({"dense.max_image_size": 10}, "dense.max_image_size", "at least"),
        ({"dense.max_image_size": 1.5}, "dense.max_image_size", "integer"),
        ({"dense.max_image_size": True}, "dense.max_image_size", "integer"),
        ({"sfm.mapper": "magic"}, "sfm.mapper", "one of"),
        ({"texture.enabled": "maybe"}, "texture.enabled", "true or false"),
        ({"dense.min_ncc": float("nan")}, "dense.min_ncc", "finite"),
        ({"dense.min_ncc": "inf"}, "dense.min_ncc", "finite"),
    ],
)
def test_bad_overrides_name_the_key_and_the_problem(overrides: dict, key: str, fragment: str) -> None:
    with pytest.raises(InvalidOptions) as info:
        build_options("balanced", overrides)
    assert info.value.key == key
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "key", "other"),
    [
        ({"dense.num_source_views": 2, "dense.min_consistent_views": 3}, "dense.min_consistent_views", "dense.num_source_views"),
        ({"ingest.min_photos": 20, "ingest.max_photos": 10}, "ingest.min_photos", "ingest.max_photos"),
        ({"ingest.max_image_size": 640}, "dense.max_image_size", "ingest.max_image_size"),
    ],
)
def test_combinations_no_single_option_shows_are_refused_naming_both_keys(overrides: dict, key: str, other: str) -> None:
    with pytest.raises(InvalidOptions) as info:
        build_options("balanced", overrides)
    assert info.value.key == key and other in info.value.problem


def test_the_schema_offers_cuda_only_where_it_can_run() -> None:
    backend = lambda schema: next(e for e in schema["options"] if e["name"] == "dense.backend")["choices"]  # noqa: E731
    assert backend(options_schema()) == ["auto", "cpu"]
    assert backend(options_schema(cuda=True)) == ["auto", "cpu", "cuda"]


def test_unknown_preset_is_rejected() -> None:
    with pytest.raises(InvalidOptions, match="preset"):
        build_options("ultra")


def test_schema_lists_every_option_with_help_and_type() -> None:
    schema = options_schema()
    names = [entry["name"] for entry in schema["options"]]
    assert names == option_keys()
    for entry in schema["options"]:
        assert entry["help"] and entry["type"] in {"integer", "number", "boolean", "string"}
        if "min" in entry:
            assert entry["min"] <= entry["default"] <= entry["max"]
    assert set(schema["presets"]) == set(PRESETS)
