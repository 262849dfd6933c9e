"""Unit tests for jailsyncd.settings.load_settings.

Files are written to tmp_path and the environment is always an explicit dict; the real
process environment and the real CBSD workdir are never consulted (every config sets
``cbsd.workdir`` to tmp_path, or ``_default_host_name``/``gethostname`` is patched).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jailsyncd import settings as settings_mod
from jailsyncd.errors import ConfigError, ExitCode
from jailsyncd.settings import (
    CbsdSettings,
    ConsulSettings,
    HostSettings,
    LogSettings,
    Secret,
    Settings,
    SyncSettings,
    load_settings,
    parse_duration,
)
from jailsyncd.model import RESERVED_META
from jailsyncd.tagspec import Rule

TOKEN = "s3cr3t-7f1c9a52-token-value"


@pytest.fixture
def cfg(tmp_path):
    """``cfg(text, env=None, nodename="node1")`` -> Settings from a file in tmp_path.

    Unless the text has its own ``[cbsd]`` table, ``cbsd.workdir`` is set to tmp_path,
    where a ``nodename`` file is written (so the host name never comes from this machine).
    """

    def load(text: str = "", env: dict[str, str] | None = None, nodename: str | None = "node1") -> Settings:
        if nodename is not None:
            (tmp_path / "nodename").write_text(nodename)
        if "[cbsd]" not in text:
            text = f"{text}\n\n[cbsd]\nworkdir = '{tmp_path}'\n"  # last: top-level keys stay top-level
        path = tmp_path / "jailsyncd.toml"
        path.write_text(text)
        return load_settings(path, env={} if env is None else env)

    return load


def error_of(load, text, env=None) -> str:
    with pytest.raises(ConfigError) as exc:
        load(text, env)
    message = str(exc.value)
    assert "\n" not in message  # one line
    assert "jailsyncd.toml" in message  # names the file
    return message


# --- defaults --------------------------------------------------------------------------


def test_defaults_from_a_nearly_empty_file(cfg, tmp_path):
    s = cfg("")
    assert s.host == HostSettings(name="")  # CBSD's node name, read per cycle by adapters.cbsd
    assert s.cbsd == CbsdSettings(workdir=tmp_path, busy_timeout=5.0)
    assert s.consul == ConsulSettings()
    assert s.consul.address == "127.0.0.1:8500"
    assert (s.consul.mode, s.consul.verify, s.consul.timeout) == ("agent", True, 10.0)
    assert (s.consul.token_file, s.consul.token, s.consul.datacenter) == (None, None, None)
    assert (s.consul.ca_file, s.consul.cert_file, s.consul.key_file, s.consul.tls_server_name) == (None, None, None, None)
    assert (s.consul.scheme, s.consul.host_port) == ("http", ("127.0.0.1", 8500))
    assert s.sync == SyncSettings(interval=30.0, max_deregistrations=10, prefer_ipv6=False)
    assert s.log == LogSettings(format="json", level="info")
    assert s.rules == ()
    assert s.source == tmp_path / "jailsyncd.toml"
    assert s.consul.read_token() is None


def test_no_file_at_all():
    s = load_settings(None, env={})
    assert s.source is None
    assert s.cbsd.workdir == Path("/usr/jails")  # CBSD's default workdir
    assert s.host.name == ""
    assert s.consul == ConsulSettings() and s.sync == SyncSettings() and s.log == LogSettings()


def test_missing_optional_file_means_defaults(tmp_path):
    s = load_settings(tmp_path / "absent.toml", env={}, required=False)
    assert s.source is None and s.consul == ConsulSettings()


def test_missing_explicit_file_is_an_error(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert str(path) in str(exc.value) and "not found" in str(exc.value)
    assert exc.value.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize("text", ["[consul\naddress = 1", "a = ", "x = 'unterminated", "[sync]\n[sync]\n", "= 1"])
def test_invalid_toml_names_the_file(tmp_path, text):
    path = tmp_path / "broken-config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert str(path) in str(exc.value)
    assert "invalid TOML" in str(exc.value)


def test_the_real_environment_is_never_read_when_env_is_given(cfg, monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "10.99.99.99:8500")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", TOKEN)
    s = cfg("", env={})
    assert s.consul.address == "127.0.0.1:8500" and s.consul.token is None


# --- unknown keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key_path", "suggestion"),
    [
        ("[consl]\naddress = 'x'", "consl", "consul"),
        ("[sycn]\ninterval = '1s'", "sycn", "sync"),
        ("rules = []", "rules", "rule"),
        ("zzzzzz = 1", "zzzzzz", None),
        ("[consul]\nadress = 'x'", "consul.adress", "address"),
        ("[sync]\nmax_deregistration = 3", "sync.max_deregistration", "max_deregistrations"),
        ("[log]\nlevl = 'info'", "log.levl", "level"),
        ("[host]\nnmae = 'h'", "host.nmae", "name"),
        ("[cbsd]\nworkdri = '/tmp'", "cbsd.workdri", "workdir"),
        ("[consul]\nqqqqqq = 1", "consul.qqqqqq", None),
        ("[[rule]]\nmatch = '*'\nmach = 'x'", "rule[0].mach", "match"),
        ("[[rule]]\nmatch = '*'\n[[rule]]\nmatch = 'a'\nprot = 80", "rule[1].prot", "port"),
        ("[[rule]]\nmatch = '*'\nzzzzzz = 1", "rule[0].zzzzzz", None),
    ],
)
def test_unknown_keys_are_rejected_with_path_and_suggestion(cfg, text, key_path, suggestion):
    message = error_of(cfg, text)
    assert f": {key_path}: unknown key" in message
    if suggestion:
        assert f"did you mean '{suggestion}'" in message
    else:
        assert "did you mean" not in message


def test_token_in_the_file_is_rejected_and_not_echoed(cfg):
    message = error_of(cfg, f"[consul]\ntoken = '{TOKEN}'")
    assert "consul.token" in message and "token_file" in message
    assert TOKEN not in message


# --- types and values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        ("consul = 'x'", "consul"),
        ("sync = 5", "sync"),
        ("[sync]\nmax_deregistrations = '10'", "sync.max_deregistrations"),
        ("[sync]\nmax_deregistrations = true", "sync.max_deregistrations"),
        ("[sync]\nmax_deregistrations = 1.5", "sync.max_deregistrations"),
        ("[sync]\nmax_deregistrations = -1", "sync.max_deregistrations"),
        ("[sync]\nprefer_ipv6 = 'yes'", "sync.prefer_ipv6"),
        ("[sync]\nprefer_ipv6 = 1", "sync.prefer_ipv6"),
        ("[consul]\naddress = 8500", "consul.address"),
        ("[consul]\naddress = ''", "consul.address"),
        ("[consul]\nverify = 'false'", "consul.verify"),
        ("[consul]\nca_file = 5", "consul.ca_file"),
        ("[consul]\nca_file = ''", "consul.ca_file"),
        ("[consul]\ndatacenter = 1", "consul.datacenter"),
        ("[consul]\nmode = 'swarm'", "consul.mode"),
        ("[consul]\ncert_file = '/c.pem'", "consul.cert_file"),  # needs key_file too
        ("[consul]\nkey_file = '/k.pem'", "consul.cert_file"),
        ("[log]\nlevel = 3", "log.level"),
        ("[log]\nlevel = 'trace'", "log.level"),
        ("[log]\nformat = 'xml'", "log.format"),
        ("[host]\nname = 5", "host.name"),
        ("[host]\nname = '" + "h" * 513 + "'", "host.name"),
        ("[cbsd]\nworkdir = 7", "cbsd.workdir"),
        ("rule = 5", "rule"),
        ("[rule]\nmatch = '*'", "rule"),  # a table, not an array of tables
        ("rule = [5]", "rule[0]"),
        ("[[rule]]\nname = 'x'", "rule[0].match"),
        ("[[rule]]\nmatch = ''", "rule[0].match"),
        ("[[rule]]\nmatch = 5", "rule[0].match"),
        ("[[rule]]\nmatch = '*'\nname = ''", "rule[0].name"),
        ("[[rule]]\nmatch = '*'\nname = 5", "rule[0].name"),
        ("[[rule]]\nmatch = '*'\nport = 0", "rule[0].port"),
        ("[[rule]]\nmatch = '*'\nport = 65536", "rule[0].port"),
        ("[[rule]]\nmatch = '*'\nport = true", "rule[0].port"),
        ("[[rule]]\nmatch = '*'\nport = '80'", "rule[0].port"),
        ("[[rule]]\nmatch = '*'\ntags = 'web'", "rule[0].tags"),
        ("[[rule]]\nmatch = '*'\ntags = ['']", "rule[0].tags"),
        ("[[rule]]\nmatch = '*'\ntags = [1]", "rule[0].tags"),
        ("[[rule]]\nmatch = '*'\nmeta = 'x'", "rule[0].meta"),
        ("[[rule]]\nmatch = '*'\nmeta = { 'a.b' = 'x' }", "rule[0].meta.a.b"),
        ("[[rule]]\nmatch = '*'\nmeta = { consul-x = 'x' }", "rule[0].meta.consul-x"),
        ("[[rule]]\nmatch = '*'\nmeta = { k = 5 }", "rule[0].meta.k"),
        ("[[rule]]\nmatch = '*'\nmeta = { k = '" + "v" * 513 + "' }", "rule[0].meta.k"),
        ("[[rule]]\nmatch = '*'\nenabled = 'no'", "rule[0].enabled"),
        ("[[rule]]\nmatch = '*'\n[[rule]]\nmatch = '*'\nport = -1", "rule[1].port"),
    ],
)
def test_wrong_types_and_values(cfg, text, key_path):
    message = error_of(cfg, text)
    assert f": {key_path}: " in message


@pytest.mark.parametrize("key", sorted(RESERVED_META))
def test_rule_meta_with_a_key_jailsyncd_writes_itself_is_rejected(cfg, key):
    """A rule's meta key that jailsyncd sets itself (``cbsd-jname``, ``jailsyncd-owner``,
    catalog mode's ``cbsd-addresses``...) passed ``check-config`` and was then dropped on
    every cycle for every matching jail (a ``meta_dropped`` note each time): a value
    that can only fail later is a settings error naming the key."""
    message = error_of(cfg, f"[[rule]]\nmatch = '*'\nmeta = {{ {key} = 'x' }}")
    assert f": rule[0].meta.{key}: " in message and "reserved" in message


def test_rule_http_check_with_a_non_ascii_path_is_rejected(cfg):
    """A path no HTTP request line can carry could only fail later, in every health round."""
    message = error_of(cfg, "[[rule]]\nmatch = '*'\nport = 80\nchecks = ['http:/ü']")
    assert ": rule[0].checks: " in message


def test_rule_meta_key_with_trailing_newline_is_rejected(cfg):
    with pytest.raises(ConfigError):
        cfg("[[rule]]\nmatch = '*'\nmeta = { \"a\\n\" = 'x' }")


def test_rules_are_decoded(cfg):
    s = cfg(
        "[[rule]]\nmatch = 'www*'\nname = 'www'\nport = 80\ntags = ['web', 'prod']\nmeta = { team = 'ops' }\n"
        "[[rule]]\nmatch = 'test*'\nenabled = false\n"
    )
    assert s.rules == (
        Rule("www*", "www", 80, ("web", "prod"), (("team", "ops"),), None),
        Rule("test*", None, None, (), (), False),
    )


def test_explicit_values_are_kept(cfg, tmp_path):
    s = cfg(
        "[host]\nname = 'explicit'\n"
        "[consul]\naddress = 'https://consul.example:8501'\ndatacenter = 'dc2'\nverify = false\n"
        "ca_file = '/etc/ca.pem'\ncert_file = '/etc/c.pem'\nkey_file = '/etc/k.pem'\ntls_server_name = 'srv'\n"
        "[sync]\nmax_deregistrations = 0\nprefer_ipv6 = true\n[log]\nformat = 'console'\nlevel = 'debug'\n"
    )
    assert s.host.name == "explicit"
    assert (s.consul.scheme, s.consul.host_port, s.consul.datacenter, s.consul.verify) == ("https", ("consul.example", 8501), "dc2", False)
    assert (s.consul.ca_file, s.consul.cert_file, s.consul.key_file) == (Path("/etc/ca.pem"), Path("/etc/c.pem"), Path("/etc/k.pem"))
    assert s.consul.tls_server_name == "srv"
    assert (s.sync.max_deregistrations, s.sync.prefer_ipv6) == (0, True)
    assert (s.log.format, s.log.level) == ("console", "debug")


# --- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml_value", "seconds"),
    [
        ("'30s'", 30.0),
        ("'1m30s'", 90.0),
        ("'500ms'", 0.5),
        ("'2h'", 7200.0),
        ("'1h30m'", 5400.0),
        ("'1.5s'", 1.5),
        ("'2m'", 120.0),
        ("45", 45.0),
        ("2.5", 2.5),
        ("1", 1.0),
        ("'167h'", 167 * 3600.0),
    ],
)
@pytest.mark.parametrize(("section", "key"), [("sync", "jitter"), ("consul", "timeout"), ("cbsd", "busy_timeout")])
def test_durations(cfg, tmp_path, section, key, toml_value, seconds):
    extra = f"workdir = '{tmp_path}'\n" if section == "cbsd" else ""
    s = cfg(f"[{section}]\n{extra}{key} = {toml_value}\n")
    assert getattr(getattr(s, section), key) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "toml_value",
    [
        "'30'",  # a string needs a unit
        "''",
        "'abc'",
        "'30 s'",
        "'-5s'",
        "'1d'",
        "'s'",
        "'30sx'",
        "'1.5.3s'",
        "true",
        "[30]",
        # zero and below
        "0",
        "0.0",
        "'0s'",
        "'0ms'",
        "-1",
        # a week and more
        "'168h'",
        "604800",
        "inf",
        "nan",
    ],
)
def test_bad_durations(cfg, toml_value):
    message = error_of(cfg, f"[sync]\ninterval = {toml_value}\n")
    assert ": sync.interval: " in message


@pytest.mark.parametrize(("value", "seconds"), [("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), (10, 10), (0.25, 0.25)])
def test_parse_duration_directly(value, seconds):
    assert parse_duration(value, ValueError) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "5", "1w", 0, -3, False, None, "0s"])
def test_parse_duration_directly_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value, ValueError)


# --- environment variables -------------------------------------------------------------


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "consul.token"
    path.write_text(f"  {TOKEN}\n")
    return path


def test_env_fills_what_the_file_leaves_unset(cfg, tmp_path, token_file):
    env = {
        "CONSUL_HTTP_ADDR": "https://10.1.2.3:8501",
        "CONSUL_HTTP_TOKEN_FILE": str(token_file),
        "CONSUL_CACERT": "/env/ca.pem",
        "CONSUL_CLIENT_CERT": "/env/c.pem",
        "CONSUL_CLIENT_KEY": "/env/k.pem",
        "UNRELATED": "x",
    }
    s = cfg("", env)
    assert s.consul.address == "https://10.1.2.3:8501"
    assert (s.consul.scheme, s.consul.host_port) == ("https", ("10.1.2.3", 8501))
    assert s.consul.token_file == token_file
    assert s.consul.token is None
    assert s.consul.read_token() == Secret(TOKEN)  # stripped content
    assert (s.consul.ca_file, s.consul.cert_file, s.consul.key_file) == (Path("/env/ca.pem"), Path("/env/c.pem"), Path("/env/k.pem"))


def test_file_values_win_over_env(cfg, tmp_path, token_file):
    other = tmp_path / "other.token"
    other.write_text("other-token")
    env = {
        "CONSUL_HTTP_ADDR": "10.9.9.9:8500",
        "CONSUL_HTTP_TOKEN_FILE": str(other),
        "CONSUL_HTTP_TOKEN": "env-token",
        "CONSUL_CACERT": "/env/ca.pem",
        "CONSUL_CLIENT_CERT": "/env/c.pem",
        "CONSUL_CLIENT_KEY": "/env/k.pem",
    }
    s = cfg(
        f"[consul]\naddress = 'consul.lan:8500'\ntoken_file = '{token_file}'\n"
        "ca_file = '/file/ca.pem'\ncert_file = '/file/c.pem'\nkey_file = '/file/k.pem'\n",
        env,
    )
    assert s.consul.address == "consul.lan:8500"
    assert s.consul.token_file == token_file and s.consul.token is None
    assert s.consul.read_token() == Secret(TOKEN)
    assert (s.consul.ca_file, s.consul.cert_file, s.consul.key_file) == (Path("/file/ca.pem"), Path("/file/c.pem"), Path("/file/k.pem"))


def test_env_token_used_when_no_token_file(cfg):
    s = cfg("", {"CONSUL_HTTP_TOKEN": TOKEN})
    assert s.consul.token_file is None
    assert isinstance(s.consul.token, Secret)
    assert s.consul.token.reveal() == TOKEN
    assert s.consul.read_token() == Secret(TOKEN)


def test_env_token_file_beats_env_token(cfg, token_file):
    s = cfg("", {"CONSUL_HTTP_TOKEN": "env-token", "CONSUL_HTTP_TOKEN_FILE": str(token_file)})
    assert s.consul.token_file == token_file and s.consul.token is None


@pytest.mark.parametrize("var", ["CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT"])
def test_empty_env_values_are_unset(cfg, var):
    s = cfg("", {var: ""})
    assert s.consul == ConsulSettings()


def test_only_one_of_client_cert_and_key_from_env_is_an_error(cfg):
    assert "CONSUL_CLIENT_CERT (environment variable for consul.cert_file" in error_of(cfg, "", {"CONSUL_CLIENT_CERT": "/c.pem"})
    assert ": consul.cert_file: " in error_of(cfg, "", {"CONSUL_CLIENT_KEY": "/k.pem"})


def test_bad_address_from_env_blames_the_variable_not_the_file(cfg):
    """Issue 10, item 14: the file does not set consul.address, so an error naming
    the file's key sent the operator to the wrong place."""
    message = error_of(cfg, "", {"CONSUL_HTTP_ADDR": "::1"})
    assert message.startswith("CONSUL_HTTP_ADDR (environment variable for consul.address, which ")
    assert "leaves unset): IPv6 addresses need brackets" in message


def test_file_address_equal_to_default_still_wins_over_env(cfg):
    s = cfg("[consul]\naddress = '127.0.0.1:8500'\n", {"CONSUL_HTTP_ADDR": "10.9.9.9:8500"})
    assert s.consul.address == "127.0.0.1:8500"


def test_file_verify_true_wins_over_env(cfg):
    s = cfg("[consul]\nverify = true\n", {"CONSUL_HTTP_SSL_VERIFY": "false"})
    assert s.consul.verify is True


# --- token file ------------------------------------------------------------------------


@pytest.mark.parametrize("content", [None, "", "   \n\t\n"], ids=["missing", "empty", "blank"])
@pytest.mark.parametrize("source", ["file", "env"])
def test_bad_token_file_names_consul_token_file(cfg, tmp_path, content, source):
    path = tmp_path / "tok"
    if content is not None:
        path.write_text(content)
    if source == "file":
        message = error_of(cfg, f"[consul]\ntoken_file = '{path}'\n")
    else:
        message = error_of(cfg, "", {"CONSUL_HTTP_TOKEN_FILE": str(path)})
    assert (": consul.token_file: " if source == "file" else "CONSUL_HTTP_TOKEN_FILE (environment variable for consul.token_file") in message
    assert str(path) in message


def test_token_file_is_reread_on_every_read_token(cfg, token_file):
    s = cfg(f"[consul]\ntoken_file = '{token_file}'\n")
    assert s.consul.read_token().reveal() == TOKEN
    token_file.write_text("rotated-token\n")
    assert s.consul.read_token().reveal() == "rotated-token"


# --- secrets never show ----------------------------------------------------------------


def test_secret_never_shows_its_value():
    secret = Secret(TOKEN)
    for text in (repr(secret), str(secret), f"{secret}", "%s" % secret, "%r" % (secret,), repr([secret]), repr({"t": secret})):
        assert TOKEN not in text
        assert "***" in text
    assert secret.reveal() == TOKEN
    assert secret == Secret(TOKEN) and secret != Secret("other") and secret != TOKEN


@pytest.mark.parametrize("how", ["env-token", "env-token-file", "file-token-file"])
def test_settings_never_show_the_token(cfg, token_file, how):
    if how == "env-token":
        s = cfg("", {"CONSUL_HTTP_TOKEN": TOKEN})
    elif how == "env-token-file":
        s = cfg("", {"CONSUL_HTTP_TOKEN_FILE": str(token_file)})
    else:
        s = cfg(f"[consul]\ntoken_file = '{token_file}'\n")
    assert s.consul.read_token().reveal() == TOKEN
    for text in (repr(s), str(s), repr(s.consul), json.dumps(s.redacted())):
        assert TOKEN not in text


def test_redacted_is_plain_data(cfg, tmp_path):
    s = cfg("[[rule]]\nmatch = 'www*'\nport = 80\ntags = ['web']\n", {"CONSUL_HTTP_TOKEN": TOKEN})
    red = s.redacted()
    assert json.loads(json.dumps(red)) == red  # plain JSON types only
    assert red["consul"]["token"] == "***"
    assert red["consul"]["address"] == "127.0.0.1:8500"
    assert red["cbsd"]["workdir"] == str(tmp_path)
    assert red["host"]["name"] == ""
    assert red["rules"][0]["match"] == "www*" and red["rules"][0]["port"] == 80
    assert set(red) >= {"host", "cbsd", "consul", "sync", "log", "rules", "source"}
    assert red["source"] == str(tmp_path / "jailsyncd.toml")


# --- consul.address --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "scheme", "host_port"),
    [
        ("127.0.0.1:8500", "http", ("127.0.0.1", 8500)),
        ("consul.service:8600", "http", ("consul.service", 8600)),
        ("http://consul:8500", "http", ("consul", 8500)),
        ("http://consul:8500/", "http", ("consul", 8500)),
        ("https://consul.example:8501", "https", ("consul.example", 8501)),
        ("[::1]:8500", "http", ("::1", 8500)),
        ("[::1]", "http", ("::1", 8500)),
        ("https://[fd00::1]:8501", "https", ("fd00::1", 8501)),
        ("consul", "http", ("consul", 8500)),  # bare host: Consul's default port
        ("10.0.0.1", "http", ("10.0.0.1", 8500)),
        ("http://consul", "http", ("consul", 8500)),
        ("consul:1", "http", ("consul", 1)),
        ("consul:65535", "http", ("consul", 65535)),
    ],
)
@pytest.mark.parametrize("source", ["file", "env"])
def test_address_forms(cfg, address, scheme, host_port, source):
    if source == "file":
        s = cfg(f"[consul]\naddress = '{address}'\n")
    else:
        s = cfg("", {"CONSUL_HTTP_ADDR": address})
    assert s.consul.address == address
    assert s.consul.scheme == scheme
    assert s.consul.host_port == host_port


@pytest.mark.parametrize(
    "address",
    [
        "consul:0",
        "consul:65536",
        "consul:abc",
        "consul:-1",
        "consul:80:80",
        "consul:²",
        "::1",  # IPv6 needs brackets
        "::1:8500",
        "fd00::1",
        "http://consul:8500/v1",
        "http://",
        "https:///",
        "[::1]:x",
    ],
)
def test_bad_addresses(cfg, address):
    message = error_of(cfg, f"[consul]\naddress = '{address}'\n")
    assert ": consul.address: " in message
    if address.count(":") > 1 and "[" not in address and "//" not in address:
        assert "brackets" in message


@pytest.mark.parametrize(
    "address",
    [
        pytest.param(":8500", id="empty-host"),
        pytest.param("consul:", id="empty-port"),
        pytest.param("[::1:8500", id="unclosed-bracket"),
    ],
)
def test_malformed_addresses_are_rejected(cfg, address):
    with pytest.raises(ConfigError):
        cfg(f"[consul]\naddress = '{address}'\n")


# --- host.name -------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["node7", None, "", "  \n"], ids=["file", "no-file", "empty", "blank"])
def test_unset_host_name_is_never_guessed_at_load(cfg, monkeypatch, content):
    """Issue 10, item 5: loading used to fill host.name from the nodename file, or
    from this machine's host name when the file could not be read (a workdir not
    mounted yet at boot): the daemon then owned entries under the wrong name for
    good. Now it stays empty; adapters.cbsd reads the node name on every cycle."""
    monkeypatch.setattr(settings_mod.socket, "gethostname", lambda: "guessed-host")
    assert cfg("", nodename=content).host.name == ""


def test_explicit_host_name_is_kept(cfg):
    assert cfg("[host]\nname = 'mine'\n", nodename="node7").host.name == "mine"


@pytest.mark.parametrize("name", [" x", "x\n", "h" * 513, "é" * 257])
def test_bad_host_name(cfg, name):
    assert ": host.name: " in error_of(cfg, f"[host]\nname = {json.dumps(name)}\n")


# --- immutability ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr_path", "value"),
    [
        ("host", HostSettings("x")),
        ("rules", ()),
        ("source", None),
        ("host.name", "x"),
        ("cbsd.workdir", Path("/")),
        ("consul.address", "x:1"),
        ("consul.token", Secret("x")),
        ("sync.max_deregistrations", 1000),
        ("log.level", "debug"),
    ],
)
def test_settings_are_frozen(cfg, attr_path, value):
    s = cfg("[[rule]]\nmatch = '*'\n")
    *parents, last = attr_path.split(".")
    target = s
    for part in parents:
        target = getattr(target, part)
    before = getattr(target, last)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(target, last, value)
    assert getattr(target, last) == before
    assert isinstance(s.rules, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rules[0].port = 1  # type: ignore[misc]


# --- issue 10, item 8: every config problem is a ConfigError ---------------------------


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("[host]\nname = 'k\xf6ln'\n".encode("latin-1"))
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    assert str(exc.value) == f"{path}: not UTF-8 (TOML files must be): bad byte at offset 16"


@pytest.mark.parametrize(
    ("template", "shown"),
    [
        ("{fqdn.x}", "{fqdn.x}"),
        ("{fqdn[0]}", "{fqdn[0]}"),
        ("{fqdn[x]}", "{fqdn[x]}"),
        ("{jname!r}", "{jname!r}"),
        ("{jname:>10}", "{jname:>10}"),
        ("{jname:d}", "{jname:d}"),
        ("{0}", "{0}"),
        ("{}", "{}"),
        ("{nodename}", "{nodename}"),
    ],
)
def test_node_name_template_fields_are_plain_names_only(cfg, template, shown):
    message = error_of(cfg, f"[catalog]\nnode_name = '{template}'\n")
    assert f": catalog.node_name: {shown} is not allowed" in message


@pytest.mark.parametrize("template", ["{jname", "jname}", "{{jname}"])
def test_node_name_template_with_unbalanced_braces(cfg, template):
    assert ": catalog.node_name: not a valid template" in error_of(cfg, f"[catalog]\nnode_name = '{template}'\n")


# A TOML writer for the fuzz test below (tomllib only reads); JSON strings are TOML strings.
def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value == float("inf") else "-inf" if value == float("-inf") else repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _fuzz_keys() -> dict[str, list[str]]:
    keys = {f.name: [k.name for k in dataclasses.fields(f.default_factory)] for f in dataclasses.fields(Settings) if f.name not in ("rules", "source")}
    keys["rule"] = ["match", "name", "port", "tags", "meta", "enabled", "checks"]
    return keys


_FUZZ_KEYS = _fuzz_keys()
_nasty_text = st.sampled_from(
    ["", " ", "0", "1ms", "10ms", "30s", "{fqdn.x}", "{jname}", "{fqdn[0]}", "{", "static", "::1", "[::1]:9311", "9311",
     "127.0.0.1:", "127.0.0.1 :8500", "unix:///tmp/c.sock", "https://", "http://h:99999", "a\x00b", "\ufeff", "é", "/nonexistent/x",
     "agent", "catalog", "article", "json", "debug", "tcp", "http:/x", "*", "{jname.a}", "{host[a]}", "{fqdn!s}"]
) | st.text(alphabet="abc{}[]:./!0123456789 \x00%#", max_size=12) | st.tuples(
    # format fields: every str.format feature a template could use by mistake
    st.sampled_from(["fqdn", "jname", "host", "", "0", "x"]), st.sampled_from(["", ".x", "[0]", "[x]", "!r", "!z", ":d", ":>3", ":%"])
).map(lambda t: "{" + t[0] + t[1] + "}")
_scalar = st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | _nasty_text
_value = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_nasty_text, inner, max_size=3), max_leaves=6)


@st.composite
def _config_text(draw) -> str:
    lines = []
    for section in draw(st.lists(st.sampled_from([*_FUZZ_KEYS, "bogus"]), unique=True, max_size=4)):
        header = "[[rule]]" if section == "rule" else f"[{section}]"
        lines.append(header)
        keys = _FUZZ_KEYS.get(section, ["x"]) + ["unknown"]
        for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=4)):
            # Mostly awkward strings: that is where the typed checks end and parsing begins.
            lines.append(f"{key} = {_toml_value(draw(st.one_of(_nasty_text, _nasty_text, _value)))}")
    return "\n".join(lines) + "\n"


@settings(max_examples=400, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(text=_config_text(), env=st.dictionaries(
    st.sampled_from(["CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY", "CONSUL_CACERT", "CONSUL_TLS_SERVER_NAME", "CONSUL_DATACENTER"]),
    _nasty_text.filter(lambda v: "\x00" not in v), max_size=3))
@example(text="[catalog]\nnode_name = '{fqdn.x}'\n", env={})
def test_fuzz_loading_raises_config_error_or_nothing(tmp_path_factory, text, env):
    """Issue 10, item 8: whatever the file and the CONSUL_* variables hold, loading
    either succeeds or raises ConfigError (exit 78 at start, config_reload_failed on
    SIGHUP); never another exception (exit 1, or a dead daemon)."""
    d = tmp_path_factory.mktemp("fuzz", numbered=True)
    (d / "nodename").write_text("node1")
    path = d / "jailsyncd.toml"
    path.write_text(text.replace("[cbsd]", f"[cbsd]\nworkdir = {json.dumps(str(d))}", 1))
    try:
        load_settings(path, env=env)
    except ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.sampled_from(["a", ".", "{", "}", "{{", "}}"])
        | st.tuples(
            st.sampled_from(["fqdn", "jname", "host", "", "0", "x"]),
            st.lists(st.sampled_from([".x", "[0]", "[x]", "!r", "!z", ":d", ":>3", ":%", ".", "[", "]", "!", ":"]), max_size=3).map("".join),
        ).map(lambda t: "{" + t[0] + t[1] + "}"),
        max_size=4,
    ).map("".join)
)
def test_fuzz_node_name_templates(cfg, template):
    """str.format has attribute, index, conversion and spec syntax, each with its own
    exception (AttributeError for ``{fqdn.x}`` crashed start and SIGHUP)."""
    try:
        cfg(f"[catalog]\nnode_name = {json.dumps(template)}\n")
    except ConfigError:
        pass


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(st.binary(max_size=200))
def test_fuzz_any_bytes_as_a_config_file(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("bytes", numbered=True)
    path = d / "jailsyncd.toml"
    path.write_bytes(data + b"\n[cbsd]\nworkdir = " + json.dumps(str(d)).encode() + b"\n")
    try:
        load_settings(path, env={})
    except ConfigError:
        pass


# --- issue 10, item 13: values that used to pass and fail later ------------------------


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        ("9311", "missing port"),
        ("localhost", "missing port"),
        ("127.0.0.1:", "missing port"),
        (":9311", "expected an IP address or host name"),
        ("::1:9311", "IPv6 addresses need brackets"),
        ("[::1]", "missing port"),
        ("[::1]9311", "missing port"),
        ("[127.0.0.1]:9311", "brackets are for IPv6"),
        ("http://127.0.0.1:9311", "without a scheme"),
        ("127.0.0.1:9311/metrics", "without a scheme or path"),
        ("127.0.0.1:0", "bad port"),
        ("127.0.0.1:65536", "bad port"),
        ("127.0.0.1:９３１１", "bad port"),
        ("127.0.0.1 :9311", "expected an IP address or host name"),
    ],
)
def test_metrics_listen_needs_host_and_port(cfg, listen, why):
    message = error_of(cfg, f"[metrics]\nlisten = '{listen}'\n")
    assert ": metrics.listen: " in message and why in message


@pytest.mark.parametrize(("listen", "expected"), [("[::1]:9311", ("::1", 9311)), ("127.0.0.1:9311", ("127.0.0.1", 9311)), ("localhost:1", ("localhost", 1))])
def test_metrics_listen_ipv4_ipv6_and_names(cfg, listen, expected):
    assert settings_mod.split_listen(cfg(f"[metrics]\nlisten = '{listen}'\n").metrics.listen) == expected


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1 :8500", "white space"),
        (" 127.0.0.1:8500", "white space"),
        ("consul .service:8500", "white space"),
        ("127.0.0.1:8500\t", "white space"),
        ("host!name:8500", "neither an IP address nor a host name"),
        ("unix:///var/run/consul.sock", "unix sockets are not supported"),
        ("ftp://127.0.0.1:8500", "unsupported scheme ftp://"),
        ("127.0.0.1:８５００", "bad port"),
    ],
)
def test_consul_address_must_be_usable(cfg, address, why):
    message = error_of(cfg, f"[consul]\naddress = '{address}'\n")
    assert ": consul.address: " in message and why in message


@pytest.mark.parametrize("source", ["file", "env"])
@pytest.mark.parametrize(
    "address",
    ["http://admin:s3cret@127.0.0.1:8500", "admin:s3cret@127.0.0.1:8500", "https://admin:s3cret@[::1]:8501", "admin:s3cret@consul"],
)
def test_address_with_user_and_password_is_refused_without_echoing_them(cfg, address, source):
    """``http://user:password@host:port`` (basic auth in the URL, which jailsyncd does
    not do: ``CONSUL_HTTP_AUTH`` is not read either) was refused as "IPv6 addresses need
    brackets", and the message (stderr, syslog under rc.d) showed the password."""
    if source == "file":
        message = error_of(cfg, f"[consul]\naddress = '{address}'\n")
    else:
        with pytest.raises(ConfigError) as exc:
            cfg("", {"CONSUL_HTTP_ADDR": address})
        message = str(exc.value)
    assert "s3cret" not in message and "admin" not in message
    assert "brackets" not in message and "user" in message


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("[cbsd]\nworkdir = 'jails'\n", {}, "cbsd.workdir"),
        ("[cbsd]\nworkdir = './usr/jails'\n", {}, "cbsd.workdir"),
        ("[consul]\ntoken_file = 'consul.token'\n", {}, "consul.token_file"),
        ("[consul]\nca_file = 'ca.pem'\n", {}, "consul.ca_file"),
        ("[consul]\ncert_file = 'c.pem'\nkey_file = '/k.pem'\n", {}, "consul.cert_file"),
        ("[consul]\ncert_file = '/c.pem'\nkey_file = 'k.pem'\n", {}, "consul.key_file"),
        ("", {"CONSUL_CACERT": "ca.pem"}, "CONSUL_CACERT"),
        ("", {"CONSUL_HTTP_TOKEN_FILE": "tok"}, "CONSUL_HTTP_TOKEN_FILE"),
    ],
)
def test_relative_paths_are_refused(cfg, tmp_path, monkeypatch, text, env, key):
    """A relative path is read from the directory jailsyncd was started in: it passed
    ``check-config`` run from the admin's shell (where the file was) and then named
    another file under rc.d, which runs the service from ``/`` (a relative
    ``cbsd.workdir`` left ``run`` retrying "nodename not found" for ever). Every path
    setting must be absolute, as ``sync.dhcp_leases`` already had to be."""
    monkeypatch.chdir(tmp_path)  # the relative file exists here, as in the admin's shell
    for name in ("consul.token", "tok", "ca.pem", "c.pem", "k.pem"):
        (tmp_path / name).write_text("00000000-0000-0000-0000-000000000001\n")
    (tmp_path / "jails").mkdir()
    (tmp_path / "jails" / "nodename").write_text("node1\n")
    if "[cbsd]" in text:
        path = tmp_path / "jailsyncd.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as exc:
            load_settings(path, env=env)
        message = str(exc.value)
    else:
        with pytest.raises(ConfigError) as exc:
            cfg(text, env)
        message = str(exc.value)
    assert key in message and "absolute path" in message


@pytest.mark.parametrize("dc", ["DC1", "dc 1", "dc.1", "dc1/x", "dc1?x", "dç1"])
def test_datacenter_that_no_consul_can_have_is_refused(cfg, dc):
    """Consul 1.8.7 refuses a datacenter outside [a-z0-9-_] at start and lowercases
    the rest, and answers ``?dc=DC1`` with 500 "No path to datacenter" when it is
    ``dc1``: such a value could only fail every catalog-mode request later."""
    message = error_of(cfg, f"[consul]\ndatacenter = '{dc}'\n")
    assert ": consul.datacenter: " in message and "a-z, 0-9, - and _" in message


def test_datacenter_from_env_is_checked_and_named(cfg):
    with pytest.raises(ConfigError) as exc:
        cfg("", {"CONSUL_DATACENTER": "DC1"})
    assert str(exc.value).startswith("CONSUL_DATACENTER (environment variable for consul.datacenter")


@pytest.mark.parametrize("dc", ["dc1", "eu-west_2", "x"])
def test_datacenter_names_consul_accepts(cfg, dc):
    assert cfg(f"[consul]\ndatacenter = '{dc}'\n").consul.datacenter == dc


@pytest.mark.parametrize("template", ["static", "{host}", "jails.{host}", ""])
def test_node_name_template_needs_a_per_jail_field(cfg, template):
    message = error_of(cfg, f"[catalog]\nnode_name = '{template}'\n")
    assert ": catalog.node_name: " in message and "every jail the same node name" in message


@pytest.mark.parametrize("template", ["{fqdn}", "{jname}.{host}", "jail-{jname}", "{fqdn}.{{x}}"])
def test_node_name_templates_with_a_per_jail_field_load(cfg, template):
    assert cfg(f"[catalog]\nnode_name = '{template}'\n").catalog.node_name == template


@pytest.mark.parametrize(
    ("section", "key", "value", "minimum"),
    [
        ("sync", "interval", "1ms", "1s"),
        ("sync", "interval", "999ms", "1s"),
        ("sync", "backoff_max", "10ms", "1s"),
        ("sync", "watch_interval", "1ms", "0.1s"),
        ("health", "interval", "10ms", "1s"),
        ("health", "timeout", "1ms", "0.1s"),
        ("consul", "timeout", "1ms", "0.1s"),
        ("cbsd", "busy_timeout", "1ms", "0.1s"),
    ],
)
def test_durations_that_make_a_hot_loop_are_refused(cfg, tmp_path, section, key, value, minimum):
    extra = f"workdir = '{tmp_path}'\n" if section == "cbsd" else ""
    message = error_of(cfg, f"[{section}]\n{extra}{key} = '{value}'\n")
    assert f": {section}.{key}: must be at least {minimum}" in message


def test_duration_minimums_are_accepted(cfg):
    s = cfg("[sync]\ninterval = '1s'\nbackoff_max = '1s'\nwatch_interval = '100ms'\n[health]\ninterval = '1s'\ntimeout = '100ms'\n")
    assert (s.sync.interval, s.sync.backoff_max, s.sync.watch_interval, s.health.interval, s.health.timeout) == (1, 1, 0.1, 1, 0.1)


# --- issue 10, item 14: CONSUL_* variables as the Consul CLI reads them -----------------


@pytest.mark.parametrize("raw", [TOKEN + "\n", f"  {TOKEN}\r\n", f"\ufeff{TOKEN}\n", f"\t{TOKEN} "])
def test_token_from_env_is_trimmed_like_a_token_file(cfg, raw):
    assert cfg("", {"CONSUL_HTTP_TOKEN": raw}).consul.read_token().reveal() == TOKEN


def test_blank_token_variable_means_no_token(cfg):
    assert cfg("", {"CONSUL_HTTP_TOKEN": " \n"}).consul.token is None


@pytest.mark.parametrize(("raw", "where"), [(f"{TOKEN[:5]} {TOKEN[5:]}", "position 6: U+0020"), (f"{TOKEN}\x07", "U+0007"), ("tökén", "position 2: U+00F6")])
def test_token_variable_that_no_header_can_carry_is_named_never_shown(cfg, raw, where):
    message = error_of(cfg, "", {"CONSUL_HTTP_TOKEN": raw})
    assert message.startswith("CONSUL_HTTP_TOKEN (environment variable for consul.token")
    assert where in message and raw.strip() not in message and TOKEN[:8] not in message


@pytest.mark.parametrize("content", [f"\ufeff{TOKEN}\n".encode(), f"\ufeff{TOKEN}\r\n".encode(), TOKEN.encode() + b"\n\n"])
def test_token_file_with_bom_or_crlf(cfg, tmp_path, content):
    path = tmp_path / "tok"
    path.write_bytes(content)
    assert cfg(f"[consul]\ntoken_file = '{path}'\n").consul.read_token().reveal() == TOKEN


def test_token_file_that_is_not_utf8_is_named_never_shown(cfg, tmp_path):
    path = tmp_path / "tok"
    path.write_bytes(b"\xff\xfe" + TOKEN.encode("utf-16-le"))
    message = error_of(cfg, f"[consul]\ntoken_file = '{path}'\n")
    assert f"token file {path}: not UTF-8 text" in message and TOKEN not in message


@pytest.mark.parametrize(
    ("env", "address"),
    [
        ({"CONSUL_HTTP_SSL": "true"}, "https://127.0.0.1:8500"),
        ({"CONSUL_HTTP_SSL": "1", "CONSUL_HTTP_ADDR": "10.0.0.1:8501"}, "https://10.0.0.1:8501"),
        ({"CONSUL_HTTP_SSL": "T", "CONSUL_HTTP_ADDR": "http://10.0.0.1:8501"}, "https://10.0.0.1:8501"),  # never back to http
        ({"CONSUL_HTTP_SSL": "false", "CONSUL_HTTP_ADDR": "10.0.0.1:8500"}, "10.0.0.1:8500"),
        ({"CONSUL_HTTP_SSL": "0", "CONSUL_HTTP_ADDR": "https://10.0.0.1"}, "https://10.0.0.1"),
    ],
)
def test_consul_http_ssl(cfg, env, address):
    s = cfg("", env)
    assert s.consul.address == address
    assert s.consul.scheme == ("https" if address.startswith("https") else "http")


def test_consul_http_ssl_does_not_override_the_files_address(cfg):
    assert cfg("[consul]\naddress = '10.0.0.1:8500'\n", {"CONSUL_HTTP_SSL": "true"}).consul.address == "10.0.0.1:8500"


@pytest.mark.parametrize(("value", "verify"), [("false", False), ("FALSE", False), ("F", False), ("0", False), ("true", True), ("1", True), ("True", True)])
def test_consul_http_ssl_verify_reads_go_booleans(cfg, value, verify):
    assert cfg("", {"CONSUL_HTTP_SSL_VERIFY": value}).consul.verify is verify


@pytest.mark.parametrize("var", ["CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY"])
@pytest.mark.parametrize("value", ["no", "off", "yes", "2", " true"])
def test_bad_boolean_variable_is_named(cfg, var, value):
    with pytest.raises(ConfigError) as exc:
        cfg("", {var: value})
    assert str(exc.value).startswith(f"{var} (environment variable): expected true or false")


def test_unix_socket_address_from_env_is_refused_naming_the_variable(cfg):
    message = error_of(cfg, "", {"CONSUL_HTTP_ADDR": "unix:///var/run/consul/http.sock"})
    assert message.startswith("CONSUL_HTTP_ADDR (environment variable for consul.address") and "unix sockets are not supported" in message


def test_tls_variables_are_honoured(cfg):
    env = {"CONSUL_CACERT": "/e/ca.pem", "CONSUL_CLIENT_CERT": "/e/c.pem", "CONSUL_CLIENT_KEY": "/e/k.pem", "CONSUL_TLS_SERVER_NAME": "server.dc1.consul"}
    c = cfg("", env).consul
    assert (c.ca_file, c.cert_file, c.key_file, c.tls_server_name) == (Path("/e/ca.pem"), Path("/e/c.pem"), Path("/e/k.pem"), "server.dc1.consul")


@pytest.mark.parametrize(
    "env",
    [
        {"CONSUL_HTTP_ADDR": "https://127.0.0.1:8501", "CONSUL_CAPATH": "/etc/consul.d/ca"},
        {"CONSUL_HTTP_SSL": "true", "CONSUL_CAPATH": "/etc/consul.d/ca"},
    ],
)
def test_consul_capath_that_would_be_ignored_is_refused_naming_it(cfg, env):
    """The Consul CLI trusts every CA file in ``CONSUL_CAPATH``; jailsyncd takes a CA
    bundle file only. Ignoring the variable would verify Consul's certificate against
    the system's CAs instead of the ones the operator named, so it is refused, naming
    the variable and what to use instead."""
    with pytest.raises(ConfigError) as exc:
        cfg("", env)
    message = str(exc.value)
    assert message.startswith("CONSUL_CAPATH (environment variable): ") and "CONSUL_CACERT" in message and "consul.ca_file" in message


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ("", {"CONSUL_HTTP_ADDR": "127.0.0.1:8500", "CONSUL_CAPATH": "/d"}),  # no TLS: the CLI ignores it too
        ("", {"CONSUL_HTTP_ADDR": "https://127.0.0.1:8501", "CONSUL_CAPATH": "/d", "CONSUL_CACERT": "/ca.pem"}),  # CACERT wins, as in the CLI
        ("[consul]\nca_file = '/ca.pem'\n", {"CONSUL_HTTP_ADDR": "https://127.0.0.1:8501", "CONSUL_CAPATH": "/d"}),
        ("", {"CONSUL_HTTP_ADDR": "https://127.0.0.1:8501", "CONSUL_CAPATH": "/d", "CONSUL_HTTP_SSL_VERIFY": "false"}),
        ("[consul]\naddress = 'https://127.0.0.1:8501'\nverify = false\n", {"CONSUL_CAPATH": "/d"}),
    ],
)
def test_consul_capath_that_changes_nothing_is_accepted(cfg, text, env):
    assert cfg(text, env).consul is not None


def test_bad_tls_server_name_from_env_is_named(cfg):
    message = error_of(cfg, "", {"CONSUL_TLS_SERVER_NAME": "server dc1"})
    assert message.startswith("CONSUL_TLS_SERVER_NAME (environment variable for consul.tls_server_name")


@pytest.mark.parametrize(("text", "value"), [("", None), ("rate_limit = 0", 0), ("rate_limit = 150", 150)])
def test_health_rate_limit(cfg, text: str, value) -> None:
    assert cfg(f"[health]\n{text}\n").health.rate_limit == value


@pytest.mark.parametrize("bad", ["-1", "2000000", '"150"', "1.5", "true"])
def test_health_rate_limit_rejected(cfg, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"health\.rate_limit"):
        cfg(f"[health]\nrate_limit = {bad}\n")


# -- [daemon] ----------------------------------------------------------------------------


def test_daemon_user_and_group_default_to_staying_as_started(cfg):
    s = cfg("")
    assert (s.daemon.user, s.daemon.group) == ("", "")


def test_daemon_user_and_group_are_read(cfg):
    s = cfg('[daemon]\nuser = "jailsyncd"\ngroup = "cbsd"\n')
    assert (s.daemon.user, s.daemon.group) == ("jailsyncd", "cbsd")


@pytest.mark.parametrize(
    "text, key",
    [
        ('[daemon]\nuser = "a b"\n', "daemon.user"),
        ('[daemon]\nuser = "x:y"\n', "daemon.user"),
        ('[daemon]\nuser = "-x"\n', "daemon.user"),
        ('[daemon]\nuser = 65534\n', "daemon.user"),
        ('[daemon]\nuser = "u"\ngroup = "g/h"\n', "daemon.group"),
        ('[daemon]\ngroup = "cbsd"\n', "daemon.group"),
        ('[daemon]\nusr = "x"\n', "daemon.usr"),
    ],
)
def test_bad_daemon_values_name_the_key(cfg, text, key):
    with pytest.raises(ConfigError) as err:
        cfg(text)
    assert f": {key}: " in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_token_file_owned_by_daemon_user_is_fine(tmp_path):
    token = tmp_path / "token"
    token.write_text("t")
    token.chmod(0o600)
    os.chown(token, 65534, 0)
    assert "owned by uid 65534" in settings_mod.token_file_problem(token)
    assert settings_mod.token_file_problem(token, owner_ok=65534) is None


def test_consul_timeout_default_outlasts_consuls_rpc_hold() -> None:
    """Issue 14, item 5: during a leader election Consul holds RPCs up to 7 s
    (agent/consul/rpc.go: rpcHoldTimeout); a shorter deadline gives up on writes that
    still commit. The default waits longer than that, with room for the write itself."""
    from jailsyncd.settings import CONSUL_RPC_HOLD

    assert CONSUL_RPC_HOLD == 7.0
    assert ConsulSettings().timeout >= CONSUL_RPC_HOLD + 2


def test_sync_watch_is_auto_or_poll(cfg) -> None:
    assert cfg("").sync.watch == "auto"
    assert cfg("[sync]\nwatch = 'poll'\n").sync.watch == "poll"
    message = error_of(cfg, "[sync]\nwatch = 'inotify'\n")
    assert "sync.watch" in message and "auto, poll" in message and "'inotify'" in message
