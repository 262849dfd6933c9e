"""``etc/jailsyncd.toml.sample`` stays in step with the settings code."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from jailsyncd.settings import Settings, load_settings

SAMPLE = Path(__file__).resolve().parents[2] / "etc" / "jailsyncd.toml.sample"


def uncommented(text: str) -> str:
    return re.sub(r"^#(?=[a-z_\[])", "", text, flags=re.M)


def test_sample_with_every_key_uncommented_loads(tmp_path: Path) -> None:
    config = tmp_path / "all.toml"
    token = tmp_path / "token"
    token.write_text("t0ken")
    text = uncommented(SAMPLE.read_text()).replace("/usr/local/etc/jailsyncd.token", str(token))

    config.write_text(text)
    settings = load_settings(config, env={})
    assert settings.consul.address == "127.0.0.1:8500"
    assert [r.match for r in settings.rules] == ["www*", "build-*"]


def test_every_settings_key_is_in_the_sample() -> None:
    text = SAMPLE.read_text()
    for section in fields(Settings):
        if section.name in ("rules", "source"):
            continue
        assert f"[{section.name}]" in text
        for key in fields(section.default_factory()):
            if key.name == "token":  # environment only, by design
                continue
            assert re.search(rf"^#{key.name} = ", text, re.M), f"{section.name}.{key.name} missing from the sample"
