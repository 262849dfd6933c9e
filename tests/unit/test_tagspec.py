"""Unit tests for jailsyncd.tagspec: the CBSD ``tags`` column grammar and ``[[rule]]``s.

Rules (module docstring): comma-separated items; ``consul.name=``, ``consul.port=``
(1-65535), ``consul=off|on`` (and synonyms); other ``key=value`` -> meta when the key
matches ``[A-Za-z0-9_-]{1,128}`` and does not start with ``consul-`` and the value is
at most 512 characters; plain items -> tags; ``'0'``/blank = nothing. Matching rules
apply in file order, then the jail's own column; later settings win.
"""

from __future__ import annotations

import pytest

from jailsyncd.tagspec import MAX_META_VALUE, Directives, Rule, directives_for, valid_meta_key

DEFAULT = Directives()


def d(column, rules=(), jname="www1"):
    return directives_for(jname, column, tuple(rules))


# --- "nothing" spellings ---------------------------------------------------------------


@pytest.mark.parametrize("column", [None, "", "0", " ", "  0  ", ",", " , 0 , ,", "\t"])
def test_empty_columns_give_defaults(column):
    assert d(column) == DEFAULT
    assert DEFAULT.enabled is True and DEFAULT.name is None and DEFAULT.port is None


# --- plain tags ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "tags"),
    [
        ("web", ("web",)),
        ("web,prod", ("web", "prod")),
        (" web , prod ", ("web", "prod")),
        ("web,,prod,0", ("web", "prod")),
        ("web,prod,web", ("web", "prod")),
        ("consul", ("consul",)),  # no '=': a tag, not a directive
        ("consul.name", ("consul.name",)),
        ("v1.2 beta", ("v1.2 beta",)),
    ],
)
def test_plain_tags(column, tags):
    result = d(column)
    assert result.tags == tags
    assert result.meta == () and result.ignored == ()


# --- consul.name -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "name"),
    [
        ("consul.name=www", "www"),
        ("consul.name= www ", "www"),
        (" consul.name = www", "www"),
        ("consul.name=WWW_1", "WWW_1"),  # sanitising is desired's job
        ("consul.name=a,consul.name=b", "b"),  # later wins
        ("consul.name=", None),  # empty value sets nothing
        ("consul.name=a,consul.name=", "a"),
    ],
)
def test_consul_name(column, name):
    result = d(column)
    assert result.name == name
    assert result.ignored == () and result.tags == () and result.meta == ()


# --- consul.port -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "port"),
    [
        ("consul.port=80", 80),
        ("consul.port=1", 1),
        ("consul.port=65535", 65535),
        ("consul.port= 8080 ", 8080),
        ("consul.port=080", 80),
        ("consul.port=80,consul.port=443", 443),
    ],
)
def test_consul_port_valid(column, port):
    result = d(column)
    assert result.port == port
    assert result.ignored == ()


@pytest.mark.parametrize(
    "value",
    ["0", "65536", "99999", "-1", "+80", "abc", "8o", "80.0", "", "80 80", "0x50", "1e3"],
)
def test_consul_port_invalid_is_ignored_with_reason(value):
    item = f"consul.port={value}"
    result = d(f"web,{item}")
    assert result.port is None
    assert result.tags == ("web",)
    assert len(result.ignored) == 1
    assert result.ignored[0].startswith(item.strip())
    assert "1-65535" in result.ignored[0]


def test_consul_port_superscript_digit_is_ignored_not_a_crash():
    result = d("consul.port=²")
    assert result.port is None and len(result.ignored) == 1


def test_consul_port_huge_number_is_ignored_not_a_crash():
    result = d("consul.port=" + "9" * 5000)
    assert result.port is None and len(result.ignored) == 1


# --- consul=on/off ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["off", "OFF", "Off", "false", "no", "0", "disabled", " off "])
def test_consul_off(value):
    result = d(f"consul={value}")
    assert result.enabled is False
    assert result.ignored == ()


@pytest.mark.parametrize("value", ["on", "ON", "true", "yes", "1", "enabled"])
def test_consul_on_after_off(value):
    assert d(f"consul=off,consul={value}").enabled is True
    assert d(f"consul={value}").enabled is True


@pytest.mark.parametrize("value", ["maybe", "", "offf", "2", "nope"])
def test_consul_garbage_is_ignored_and_keeps_state(value):
    result = d(f"consul={value}")
    assert result.enabled is True
    assert len(result.ignored) == 1 and result.ignored[0].startswith(f"consul={value}")
    assert d(f"consul=off,consul={value}").enabled is False


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("CONSUL=OFF", Directives(enabled=False)),
        ("Consul=off", Directives(enabled=False)),
        ("consul=off,CONSUL=on", Directives(enabled=True)),
        ("Consul.Name=www", Directives(name="www")),
        ("CONSUL.PORT=80", Directives(port=80)),
        ("Consul.Check=tcp", Directives(checks=("tcp",))),
    ],
)
def test_directive_names_are_read_without_regard_to_case(column, expected):
    """Like their values (``consul=OFF``): ``CONSUL=OFF`` registered the jail, with a
    meta pair ``CONSUL: OFF``, and ``Consul.Port=80`` was dropped as a bad meta key
    (the dot), not read as the port the admin wrote."""
    assert d(column) == expected


@pytest.mark.parametrize("path", ["/ü", "/a\tb", "/a\x7fb", "/caf\u00e9/status", "/\u200b"])
def test_http_check_whose_path_no_request_line_can_carry_is_ignored(path):
    """``consul.check=http:/ü`` was accepted: every health round then failed inside the
    prober (UnicodeEncodeError, a ``health_probe_failed`` warning each round) and the
    check stayed critical with no output. The path must be printable ASCII (percent-
    encode anything else), as an HTTP request line carries it."""
    result = d(f"consul.port=80,consul.check=http:{path},consul.check=http:/ok%C3%BC?a=1")
    assert result.checks == ("http:/ok%C3%BC?a=1",)
    assert len(result.ignored) == 1 and "consul.check=http:/path" in result.ignored[0]


# --- meta ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "meta"),
    [
        ("owner=team-a", {"owner": "team-a"}),
        ("owner = team-a ", {"owner": "team-a"}),
        ("Env_1=prod,tier=2", {"Env_1": "prod", "tier": "2"}),
        ("k=v=w", {"k": "v=w"}),
        ("k=", {"k": ""}),
        ("k=1,k=2", {"k": "2"}),
        ("consul_x=1", {"consul_x": "1"}),  # only the 'consul-' prefix is reserved
        ("a" * 128 + "=v", {"a" * 128: "v"}),
        ("k=" + "v" * MAX_META_VALUE, {"k": "v" * 512}),
    ],
)
def test_meta(column, meta):
    result = d(column)
    assert dict(result.meta) == meta
    assert len(result.meta) == len(meta)
    assert result.tags == () and result.ignored == ()


@pytest.mark.parametrize(
    "item",
    ["a.b=1", "consul-x=1", "consul-=1", "=v", "a b=1", "a/b=1", "ünï=1", "a" * 129 + "=v", "a:b=1"],
)
def test_invalid_meta_key_is_ignored(item):
    result = d(f"web,{item}")
    assert result.meta == ()
    assert result.tags == ("web",)
    assert len(result.ignored) == 1 and result.ignored[0].startswith(item)
    assert "meta key" in result.ignored[0]


def test_overlong_meta_value_is_ignored_without_echoing_the_value():
    value = "v" * (MAX_META_VALUE + 1)
    result = d(f"note={value},ok=1")
    assert dict(result.meta) == {"ok": "1"}
    assert len(result.ignored) == 1
    assert result.ignored[0].startswith("note=")
    assert value not in result.ignored[0]
    assert str(MAX_META_VALUE) in result.ignored[0]


@pytest.mark.parametrize("item", ["consul.foo=1", "consul.tags=a", "consul.=x", "Consul.Foo=1", "CONSUL.TAGS=a"])
def test_unknown_consul_directive_is_ignored(item):
    result = d(item)
    assert result == Directives(ignored=result.ignored)
    assert len(result.ignored) == 1 and result.ignored[0].startswith(item)
    assert "unknown" in result.ignored[0]


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("a", True),
        ("A-b_9", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("a.b", False),
        ("consul-x", False),
        ("consul-", False),
        ("consulx", True),
        ("Consul-x", True),  # Consul's reserved prefix check is case-sensitive
        ("a b", False),
        ("é", False),
        pytest.param(
            "a\n",
            False,
            id="trailing-newline",
        ),
    ],
)
def test_valid_meta_key(key, valid):
    assert valid_meta_key(key) is valid


# --- the whole grammar at once ---------------------------------------------------------


def test_mixed_column():
    result = d("web, consul.name=www ,consul.port=8080,owner=ops,prod,consul.port=x,consul.bad=1,a.b=2")
    assert result.name == "www"
    assert result.port == 8080
    assert result.enabled is True
    assert result.tags == ("web", "prod")
    assert dict(result.meta) == {"owner": "ops"}
    assert len(result.ignored) == 3


def test_hundreds_of_items():
    tags = [f"t{i}" for i in range(300)]
    metas = [f"k{i}=v{i}" for i in range(300)]
    bad = [f"consul.x{i}=1" for i in range(100)]
    result = d(",".join(tags + metas + bad + ["consul.port=9090"]))
    assert result.tags == tuple(tags)
    assert dict(result.meta) == {f"k{i}": f"v{i}" for i in range(300)}
    assert len(result.ignored) == 100
    assert result.port == 9090


# --- rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "jname", "matches"),
    [
        ("www*", "www1", True),
        ("www*", "www", True),
        ("www*", "web1", False),
        ("www*", "WWW1", False),  # jnames are case-sensitive identities
        ("*", "anything", True),
        ("db?", "db1", True),
        ("db?", "db10", False),
        ("db[12]", "db2", True),
        ("db[12]", "db3", False),
        ("web_1", "web-1", False),
    ],
)
def test_rule_matches_glob(pattern, jname, matches):
    assert Rule(pattern).matches(jname) is matches
    result = directives_for(jname, None, (Rule(pattern, port=81),))
    assert result.port == (81 if matches else None)


def test_rules_apply_in_file_order_later_wins():
    rules = [
        Rule("*", name="generic", port=80, tags=("all",), meta=(("team", "core"), ("tier", "1"))),
        Rule("www*", name="www", port=8080, tags=("web", "all"), meta=(("team", "web"),)),
        Rule("db*", name="db", port=5432, tags=("db",)),
    ]
    result = d(None, rules, jname="www1")
    assert result.name == "www"
    assert result.port == 8080
    assert result.tags == ("all", "web")
    assert dict(result.meta) == {"team": "web", "tier": "1"}
    assert result.enabled is True
    reversed_result = d(None, list(reversed(rules)), jname="www1")
    assert reversed_result.name == "generic" and reversed_result.port == 80
    assert dict(reversed_result.meta) == {"team": "core", "tier": "1"}


@pytest.mark.parametrize(
    ("enabled_values", "expected"),
    [
        ((None,), True),
        ((False,), False),
        ((False, None), False),  # None means "not set", it does not reset
        ((False, True), True),
        ((True, False), False),
    ],
)
def test_rule_enabled(enabled_values, expected):
    rules = [Rule("www*", enabled=e) for e in enabled_values]
    assert d(None, rules).enabled is expected


def test_non_matching_rules_do_nothing():
    rules = [Rule("db*", name="db", port=5432, tags=("db",), meta=(("a", "b"),), enabled=False)]
    assert d(None, rules, jname="www1") == DEFAULT


@pytest.mark.parametrize(
    ("column", "check"),
    [
        ("consul.name=web", lambda r: r.name == "web"),
        ("consul.port=9000", lambda r: r.port == 9000),
        ("consul=on", lambda r: r.enabled is True),
        ("team=mine", lambda r: dict(r.meta)["team"] == "mine"),
        ("extra", lambda r: r.tags == ("web", "extra")),
        ("web", lambda r: r.tags == ("web",)),
    ],
)
def test_tags_column_overrides_rules(column, check):
    rules = [Rule("www*", name="www", port=80, tags=("web",), meta=(("team", "ops"),), enabled=False)]
    result = d(column, rules)
    assert check(result)
    base = d(None, rules)
    assert (base.name, base.port, base.enabled, dict(base.meta), base.tags) == ("www", 80, False, {"team": "ops"}, ("web",))


@pytest.mark.parametrize("column", ["consul.port=0", "consul.port=x", "consul.name=", "consul=maybe"])
def test_invalid_or_empty_column_values_keep_the_rule_value(column):
    rules = [Rule("www*", name="www", port=80, enabled=False)]
    result = d(column, rules)
    assert (result.name, result.port, result.enabled) == ("www", 80, False)


def test_column_can_opt_out_a_rule_enabled_jail():
    assert d("consul=off", [Rule("*", enabled=True)]).enabled is False
