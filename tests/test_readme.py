"""The README stays true: every setting, option and preset it must document is there."""

from __future__ import annotations

import re
from pathlib import Path

from pipelines.options import PRESETS
from recon_service.settings import Settings, env_name

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_environment_variable_is_in_the_configuration_table() -> None:
    missing = [env_name(f) for f in Settings.model_fields if f"`{env_name(f)}`" not in README]
    assert not missing, f"README's configuration table lacks {missing}"


def test_the_two_setup_commands_and_every_preset_are_documented() -> None:
    assert "make run" in README and "make test" in README
    for preset in PRESETS:
        assert preset in README


def test_make_targets_named_in_the_readme_exist() -> None:
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    named = set(re.findall(r"`make ([a-z-]+)`", README))
    assert named <= targets, f"README names make targets that do not exist: {named - targets}"


def test_presets_table_matches_the_options_module() -> None:
    from pipelines.options import build_options, options_to_dict

    values = {name: options_to_dict(build_options(name)) for name in ("preview", "balanced", "high")}
    differing = [k for k in values["balanced"] if k != "preset" and len({str(v[k]) for v in values.values()}) > 1]
    for key in differing:
        row = f"| `{key}` | " + " | ".join(str(values[p][key]) for p in ("preview", "balanced", "high")) + " |"
        assert row in README, f"README's presets table is out of date for {key}: expected {row}"
