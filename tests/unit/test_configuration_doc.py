"""``docs/configuration.md`` stays in step with the settings code.

The doc has one table per settings section (``| key | default | meaning |``, the key
written as ``section.key``) and one ``[[rule]]`` table (``| key | meaning |``). These
tests fail when a setting is added, removed or renamed without the doc, when a
documented default is not the code's default, or when the ``[[rule]]`` keys differ
from what ``settings._decode_rules`` accepts.

Default column grammar: a backticked literal (``"30s"``, ``10``, ``false``,
``/usr/jails``), ``none`` (the code's default is None), ``empty`` (the empty string),
or ``computed...`` for the settings filled in at load time (``catalog.host_tag``).
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

import pytest

from jailsyncd import settings as settings_module
from jailsyncd.errors import ConfigError
from jailsyncd.settings import Settings, parse_duration

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

#: Never in the file: only the environment sets it (CONSUL_HTTP_TOKEN).
ENV_ONLY = {"consul.token"}
#: Not settings keys: the rules list and the file the settings came from.
NOT_KEYS = {"rules", "source"}
#: Settings whose default is worked out at load time (the code's default is "").
COMPUTED = {"catalog.host_tag"}


def section_fields() -> dict[str, Field]:
    """``section.key`` -> dataclass field, for every settings key a file may set."""
    result: dict[str, Field] = {}
    for section in fields(Settings):
        if section.name in NOT_KEYS:
            continue
        assert section.default_factory is not MISSING, f"Settings.{section.name} is not a section"
        for key in fields(section.default_factory):
            dotted = f"{section.name}.{key.name}"
            if dotted not in ENV_ONLY:
                result[dotted] = key
    return result


def default_of(fld: Field) -> Any:
    if fld.default is not MISSING:
        return fld.default
    assert fld.default_factory is not MISSING, f"{fld.name} has no default"
    return fld.default_factory()


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def doc_tables() -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Rows of the settings tables (``section.key`` -> (heading, default cell)) and
    of the ``[[rule]]`` table (key -> meaning). Duplicate rows fail here."""
    settings_rows: dict[str, tuple[str, str]] = {}
    rule_rows: dict[str, str] = {}
    heading = ""
    for number, line in enumerate(CONFIGURATION.read_text().splitlines(), start=1):
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            continue
        if not line.startswith("| `"):
            continue
        row = cells(line)
        keys = re.findall(r"`([a-z0-9_.]+)`", row[0])
        assert len(keys) == 1, f"line {number}: one key per row, got {row[0]!r}"
        key = keys[0]
        if "[[rule]]" in heading:
            assert key not in rule_rows, f"line {number}: rule key {key} documented twice"
            rule_rows[key] = row[-1]
        else:
            assert len(row) == 3, f"line {number}: expected | key | default | meaning |, got {line!r}"
            assert key not in settings_rows, f"line {number}: {key} documented twice"
            settings_rows[key] = (heading, row[1])
    return settings_rows, rule_rows


def parse_default(dotted: str, cell: str, code_default: Any) -> Any:
    """The documented default, as a value comparable with the code's default."""
    if cell.lower().startswith("computed"):
        return "<computed>"
    if cell == "none" or cell.startswith("none "):
        return None
    if cell == "empty" or cell.startswith("empty "):
        return ""
    m = re.match(r"`([^`]*)`", cell)
    assert m, f"{dotted}: default {cell!r} is none of: `literal`, none, empty, computed"
    text = m.group(1)
    if isinstance(code_default, bool):
        assert text in ("true", "false"), f"{dotted}: expected true or false, got {text!r}"
        return text == "true"
    if isinstance(code_default, int):
        return int(text)
    if isinstance(code_default, float):  # every float setting is a duration

        def fail(message: str) -> AssertionError:
            return AssertionError(f"{dotted}: {message}")

        return parse_duration(text, fail, zero_ok=True)
    if isinstance(code_default, Path):
        return Path(text)
    if isinstance(code_default, tuple):  # a list of paths, written as a TOML array
        return tuple(Path(item) for item in json.loads(text))
    return text


def test_every_setting_has_a_row() -> None:
    documented, _ = doc_tables()
    missing = sorted(set(section_fields()) - set(documented))
    assert missing == [], f"settings missing from docs/configuration.md: {missing}"


def test_every_row_names_a_real_setting() -> None:
    documented, _ = doc_tables()
    unknown = sorted(set(documented) - set(section_fields()))
    assert unknown == [], f"docs/configuration.md documents keys the code does not have: {unknown}"


def test_the_token_is_not_a_file_key() -> None:
    documented, _ = doc_tables()
    assert not ENV_ONLY & set(documented)
    with pytest.raises(ConfigError, match="unknown key"):
        settings_module._build({"consul": {"token": "x"}}, {}, "test", None)  # noqa: SLF001


def test_rows_sit_under_their_own_section() -> None:
    documented, _ = doc_tables()
    for key, (heading, _) in documented.items():
        section = key.split(".", 1)[0]
        assert f"[{section}]" in heading, f"{key} is under the heading {heading!r}, not [{section}]"


@pytest.mark.parametrize("dotted", sorted(section_fields()))
def test_documented_default_is_the_code_default(dotted: str) -> None:
    documented, _ = doc_tables()
    if dotted not in documented:
        pytest.skip("no row (test_every_setting_has_a_row fails)")
    fld = section_fields()[dotted]
    code = default_of(fld)
    doc = parse_default(dotted, documented[dotted][1], code)
    if dotted in COMPUTED:
        assert doc == "<computed>", f"{dotted}: the default is computed at load time; say so"
        assert code == "", f"{dotted}: the code now has a fixed default {code!r}; document it"
        return
    assert doc != "<computed>", f"{dotted}: only {sorted(COMPUTED)} have computed defaults"
    assert doc == code, f"{dotted}: docs/configuration.md says {documented[dotted][1]!r}, the code says {code!r}"


def allowed_rule_keys() -> set[str]:
    """The set literal ``allowed = {...}`` inside ``settings._decode_rules``."""
    source = textwrap.dedent(inspect.getsource(settings_module._decode_rules))  # noqa: SLF001
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "allowed" for t in node.targets):
            value = ast.literal_eval(node.value)
            assert isinstance(value, set)
            return value
    raise AssertionError("settings._decode_rules has no 'allowed = {...}' set any more; update this test")


def test_rule_keys_match_what_the_decoder_accepts() -> None:
    _, rule_rows = doc_tables()
    allowed = allowed_rule_keys()
    assert sorted(set(rule_rows)) == sorted(allowed)


def test_rule_key_extraction_agrees_with_the_decoder() -> None:
    """Guards the AST read above: each extracted key is accepted, a made-up one is not."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{key}: {message}")

    for key in allowed_rule_keys():
        try:
            settings_module._decode_rules([{"match": "x", key: object()}], fail)  # noqa: SLF001
        except ConfigError as exc:
            assert "unknown key" not in str(exc), f"{key}: {exc}"
    with pytest.raises(ConfigError, match="unknown key"):
        settings_module._decode_rules([{"match": "x", "no_such_key": 1}], fail)  # noqa: SLF001


def test_match_is_marked_required() -> None:
    _, rule_rows = doc_tables()
    text = CONFIGURATION.read_text()
    assert "match" in rule_rows
    assert re.search(r"^\| `match` \(required\) \|", text, re.M)


def _durations_paragraph(text: str) -> str:
    return text.split("Durations are", 1)[1].split("\n\n", 1)[0]


def _man_durations_paragraph() -> str:
    man = (CONFIGURATION.parent / "man" / "jailsyncd.toml.5").read_text()
    return man.split("Durations are", 1)[1].split("\n.Pp", 1)[0]


def test_the_durations_paragraph_names_every_minimum_and_every_zero() -> None:
    """The configuration doc and jailsyncd.toml(5) name each duration that may be 0 and
    each minimum (``settings._MAY_BE_ZERO``, ``settings.MIN_DURATION``), in one
    sentence per minimum: ``key, key and key at least VALUE``."""
    zero = settings_module._MAY_BE_ZERO  # noqa: SLF001
    by_minimum: dict[float, set[str]] = {}
    for key, minimum in settings_module.MIN_DURATION.items():
        by_minimum.setdefault(minimum, set()).add(key)
    for name, paragraph, key_pattern, value_pattern in (
        ("configuration.md", _durations_paragraph(CONFIGURATION.read_text()), r"`([a-z_]+\.[a-z_]+)`", r"`(\d+m?s)`"),
        ("jailsyncd.toml.5", _man_durations_paragraph(), r"\.Cm ([a-z_]+\.[a-z_]+)", r"\\\(dq(\d+m?s)\\\(dq"),
    ):
        # The keys before "arrive:" may be zero; after it, each "at least VALUE" closes
        # the group of keys named since the previous one.
        zero_part, minimums = paragraph.split("arrive:", 1)
        found: dict[float, set[str]] = {}
        for group in re.split(r"[;.]\s", minimums):
            if not re.search(r"at\s+least", group):
                continue
            value = re.search(r"at\s+least\s+(?:\.Ql\s+)?" + value_pattern, group)
            assert value, f"{name}: 'at least' without a duration: {group!r}"
            found[parse_duration(value.group(1), lambda m: ConfigError(m))] = set(re.findall(key_pattern, group))
        assert found == by_minimum, name
        zeros = set(re.findall(key_pattern, zero_part))
        assert zeros == zero, name
