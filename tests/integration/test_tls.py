"""A real TLS-enabled Consul agent (HTTPS with client certificates required):
mutual TLS works, verification is on by default, and every TLS mistake is one clear
line with exit 69, never a fallback to an unverified connection.

The certificates are made here with the ``cryptography`` package: a CA, a server
certificate for ``server.dc1.consul``, ``localhost`` and 127.0.0.1 (what
``consul tls cert create -server`` makes), a second one for ``server.dc1.consul``
only, a client certificate, and an unrelated CA. The agents keep their plain HTTP
port too, which the harness uses to check what Consul holds.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import ConsulServer, free_port, log_events, run_cli

from jailsyncd.errors import ExitCode
from testing.sample import Workdir

pytestmark = pytest.mark.integration

TLS_FAILED = "TLS handshake failed (check consul.ca_file, cert_file and tls_server_name)"


# -- certificates ------------------------------------------------------------------------


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.with_suffix(".key").write_bytes(key_pem)
    path.with_suffix(".key").chmod(0o600)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))


def make_ca(path: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = _validity(x509.CertificateBuilder().subject_name(subject).issuer_name(subject))
    cert = (
        builder.public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(path, key, cert)
    return key, cert


def make_leaf(path: Path, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], name: str, dns: tuple[str, ...], ips: tuple[str, ...] = ()) -> None:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    builder = _validity(x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])))
    cert = (
        builder.issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(path, key, cert)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d / "ca", "jailsyncd test CA")
    make_ca(d / "other-ca", "some other CA")
    make_leaf(d / "server", ca, "server.dc1.consul", ("server.dc1.consul", "localhost"), ("127.0.0.1",))
    make_leaf(d / "server-dns-only", ca, "server.dc1.consul", ("server.dc1.consul",))
    make_leaf(d / "client", ca, "client.dc1.consul", ("client.dc1.consul",))
    return d


class TlsConsul(ConsulServer):
    https_port: int = 0

    @property
    def https_address(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"


def tls_agent(binary: str, pki: Path, server_cert: str) -> TlsConsul:
    https = free_port()
    hcl = f"""disable_update_check = true
ports {{ https = {https} }}
verify_incoming = true
verify_outgoing = true
ca_file = "{pki / 'ca.pem'}"
cert_file = "{pki / (server_cert + '.pem')}"
key_file = "{pki / (server_cert + '.key')}"
"""
    server = TlsConsul(binary, hcl=hcl)
    server.https_port = https
    return server.start()  # start() waits on the plain HTTP port, which dev agents keep


@pytest.fixture(scope="module")
def tls_consul(consul_bin: str, pki: Path):
    server = tls_agent(consul_bin, pki, "server")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dns_only_consul(consul_bin: str, pki: Path):
    server = tls_agent(consul_bin, pki, "server-dns-only")
    yield server
    server.stop()


def tls_config(path: Path, workdir: Workdir, address: str | None, **consul: str) -> Path:
    """A config whose [consul] table holds exactly ``address`` and ``consul``
    (absent keys may then come from CONSUL_* variables)."""
    lines = [f'address = "{address}"'] if address else []
    lines += [f'{key} = "{value}"' for key, value in consul.items()]
    path.write_text(
        f'[host]\nname = "node1"\n\n[cbsd]\nworkdir = "{workdir.root}"\n\n[consul]\ntimeout = "5s"\n'
        + "\n".join(lines) + "\n\n[health]\nenabled = false\n"
    )
    return path


def client_files(pki: Path, ca: str = "ca") -> dict[str, str]:
    return {"ca_file": str(pki / f"{ca}.pem"), "cert_file": str(pki / "client.pem"), "key_file": str(pki / "client.key")}


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    return lines[0]


@pytest.fixture
def jail(workdir: Workdir) -> Workdir:
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.60.1")
    return workdir


def test_mutual_tls_works(tls_consul: TlsConsul, pki: Path, tmp_path: Path, jail: Workdir) -> None:
    tls_consul.wipe()
    config = tls_config(tmp_path / "c.toml", jail, tls_consul.https_address, **client_files(pki))
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    assert tls_consul.services()["jailsyncd-web1"]["Address"] == "127.0.60.1"
    proc = run_cli("once", config=config)
    assert [e["writes"] for e in log_events(proc.stderr) if e["event"] == "cycle_finished"] == [0]


@pytest.mark.parametrize(
    "case",
    ["no_ca_file", "wrong_ca", "no_client_certificate", "wrong_server_name"],
)
def test_tls_mistakes_fail_clearly_and_change_nothing(tls_consul: TlsConsul, pki: Path, tmp_path: Path, jail: Workdir, case: str) -> None:
    tls_consul.wipe()
    files = client_files(pki)
    if case == "no_ca_file":  # the system's CAs do not know ours: verification is on by default
        del files["ca_file"]
    elif case == "wrong_ca":
        files = client_files(pki, "other-ca")
    elif case == "no_client_certificate":  # the agent has verify_incoming = true
        del files["cert_file"], files["key_file"]
    else:
        files["tls_server_name"] = "consul.example.org"
    config = tls_config(tmp_path / "c.toml", jail, tls_consul.https_address, **files)
    proc = run_cli("once", config=config)
    assert proc.returncode == ExitCode.CONSUL_UNAVAILABLE, proc.stderr
    assert error_line(proc.stderr) == f"jailsyncd: GET {tls_consul.https_address}/v1/agent/services: {TLS_FAILED}"
    assert tls_consul.services() == {}


def test_tls_server_name_when_the_certificate_lacks_the_ip(dns_only_consul: TlsConsul, pki: Path, tmp_path: Path, jail: Workdir) -> None:
    dns_only_consul.wipe()
    address = dns_only_consul.https_address
    # The certificate names server.dc1.consul only: checked against 127.0.0.1 it fails...
    proc = run_cli("once", config=tls_config(tmp_path / "a.toml", jail, address, **client_files(pki)))
    assert proc.returncode == ExitCode.CONSUL_UNAVAILABLE
    assert TLS_FAILED in error_line(proc.stderr)
    assert dns_only_consul.services() == {}
    # ... and works with tls_server_name in the file,
    files = {**client_files(pki), "tls_server_name": "server.dc1.consul"}
    proc = run_cli("once", config=tls_config(tmp_path / "b.toml", jail, address, **files))
    assert proc.returncode == 0, proc.stderr
    assert "jailsyncd-web1" in dns_only_consul.services()
    # ... or with everything from Consul's own variables (address included).
    jail.set("web1", ip4_addr="127.0.60.2")
    env = {
        "CONSUL_HTTP_ADDR": address,
        "CONSUL_CACERT": str(pki / "ca.pem"),
        "CONSUL_CLIENT_CERT": str(pki / "client.pem"),
        "CONSUL_CLIENT_KEY": str(pki / "client.key"),
        "CONSUL_TLS_SERVER_NAME": "server.dc1.consul",
    }
    proc = run_cli("once", config=tls_config(tmp_path / "c.toml", jail, None), env=env)
    assert proc.returncode == 0, proc.stderr
    assert dns_only_consul.services()["jailsyncd-web1"]["Address"] == "127.0.60.2"


def test_plain_http_to_the_https_port_is_named_clearly(tls_consul: TlsConsul, tmp_path: Path, jail: Workdir) -> None:
    """A missing ``https://``: Consul's answer (400 "Client sent an HTTP request to an
    HTTPS server") is in the one line. Exit 77 today, as for any 400 (docs/reliability.md)."""
    tls_consul.wipe()
    config = tls_config(tmp_path / "c.toml", jail, f"127.0.0.1:{tls_consul.https_port}")
    proc = run_cli("once", config=config)
    assert proc.returncode == ExitCode.CONSUL_REFUSED
    line = error_line(proc.stderr)
    assert line.startswith(f"jailsyncd: GET http://127.0.0.1:{tls_consul.https_port}/v1/agent/services: ")
    assert "HTTP request to an HTTPS server" in line
    assert tls_consul.services() == {}


@pytest.mark.parametrize("key", ["ca_file", "cert_file"])
def test_missing_tls_file_is_named(tls_consul: TlsConsul, pki: Path, tmp_path: Path, jail: Workdir, key: str) -> None:
    files = {**client_files(pki), key: str(tmp_path / "nowhere.pem")}
    proc = run_cli("once", config=tls_config(tmp_path / "c.toml", jail, tls_consul.https_address, **files))
    assert proc.returncode in (ExitCode.CONFIG, ExitCode.CONSUL_UNAVAILABLE), proc.stderr
    line = error_line(proc.stderr)
    assert str(tmp_path / "nowhere.pem") in line


def test_consul_cli_tls_variables(tls_consul: TlsConsul, pki: Path, tmp_path: Path, jail: Workdir) -> None:
    """Issue 10, item 14: ``CONSUL_HTTP_SSL=true`` with a scheme-less
    ``CONSUL_HTTP_ADDR`` means https, as for the Consul CLI (it used to be ignored:
    plain HTTP to the HTTPS port); ``CONSUL_HTTP_SSL_VERIFY`` takes Go's booleans
    (``F`` used to leave verification on); a bad one is named, exit 78."""
    tls_consul.wipe()
    env = {
        "CONSUL_HTTP_ADDR": f"127.0.0.1:{tls_consul.https_port}",
        "CONSUL_HTTP_SSL": "true",
        "CONSUL_CACERT": str(pki / "ca.pem"),
        "CONSUL_CLIENT_CERT": str(pki / "client.pem"),
        "CONSUL_CLIENT_KEY": str(pki / "client.key"),
    }
    config = tls_config(tmp_path / "c.toml", jail, None)
    proc = run_cli("once", config=config, env=env)
    assert proc.returncode == 0, proc.stderr
    assert tls_consul.services()["jailsyncd-web1"]["Address"] == "127.0.60.1"
    # No CA (the system's CAs do not know ours), verification off the way the CLI spells it.
    jail.set("web1", ip4_addr="127.0.60.3")
    unverified = {k: v for k, v in env.items() if k != "CONSUL_CACERT"} | {"CONSUL_HTTP_SSL_VERIFY": "F"}
    proc = run_cli("once", config=config, env=unverified)
    assert proc.returncode == 0, proc.stderr
    assert tls_consul.services()["jailsyncd-web1"]["Address"] == "127.0.60.3"
    proc = run_cli("once", config=config, env=unverified | {"CONSUL_HTTP_SSL_VERIFY": "no"})
    assert proc.returncode == ExitCode.CONFIG
    assert error_line(proc.stderr).startswith("jailsyncd: CONSUL_HTTP_SSL_VERIFY (environment variable): expected true or false")
