"""Tests for tools/certgen.py: the real CLI in a child process, real certs, real TLS handshakes."""

from __future__ import annotations

import datetime as dt
import importlib.util
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.pki import IssuingCA, ca_hash, load_csr, make_csr

CERTGEN = Path(__file__).resolve().parent.parent / "tools" / "certgen.py"
TIMEOUT = 10.0
SERVER_AND_CLIENT = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
ROLE_EKUS = {
    "manager": SERVER_AND_CLIENT,
    "node": SERVER_AND_CLIENT,
    "admin": [ExtendedKeyUsageOID.CLIENT_AUTH],
}


@pytest.fixture(scope="module")
def certgen() -> Iterator[ModuleType]:
    """tools/ is not a package, so load the module from its file path."""
    spec = importlib.util.spec_from_file_location("fleet_certgen_under_test", CERTGEN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a user would."""
    return subprocess.run(
        [sys.executable, str(CERTGEN), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(*args: str | Path) -> subprocess.CompletedProcess[str]:
    result = run(*args)
    assert result.returncode == 0, result.stderr
    return result


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode == code
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    pki = tmp_path / "pki"
    ok("init", pki)
    return pki


def test_init_makes_a_private_ten_year_ca(tmp_path: Path) -> None:
    pki = tmp_path / "new" / "pki"
    ok("init", pki)

    assert pki.stat().st_mode & 0o777 == 0o700
    assert (pki / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (pki / "ca.crt").stat().st_mode & 0o777 == 0o644
    assert b"BEGIN PRIVATE KEY" in (pki / "ca.key").read_bytes()  # PKCS8, unencrypted
    ca = load(pki / "ca.crt")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 1
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Fleet CA"
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)
    ca.verify_directly_issued_by(ca)


@pytest.mark.parametrize("role", ["manager", "node", "admin"])
def test_issued_cert_carries_identity_and_usages(ca_dir: Path, role: str) -> None:
    ok("issue", role, "web-1.prod_a", "--dir", ca_dir)

    cert = load(ca_dir / "web-1.prod_a.crt")
    cert.verify_directly_issued_by(load(ca_dir / "ca.crt"))
    assert uris(cert) == [f"spiffe://fleet/{role}/web-1.prod_a"]
    assert ekus(cert) == ROLE_EKUS[role]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web-1.prod_a"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == role
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=364) < lifetime < dt.timedelta(days=366)
    assert (ca_dir / "web-1.prod_a.key").stat().st_mode & 0o777 == 0o600


def test_san_ips_and_names_and_days(ca_dir: Path) -> None:
    ok("issue", "manager", "mgr", "--dir", ca_dir, "--san", "10.1.2.3", "--san", "::1",
       "--san", "mgr.fleet.internal", "--days", "30")  # fmt: skip

    cert = load(ca_dir / "mgr.crt")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"10.1.2.3", "::1"}
    assert san.get_values_for_type(x509.DNSName) == ["mgr.fleet.internal"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=29) < lifetime < dt.timedelta(days=31)


def test_refuses_to_overwrite_without_force(ca_dir: Path) -> None:
    ok("issue", "node", "n1", "--dir", ca_dir)
    before = (ca_dir / "n1.crt").read_bytes(), (ca_dir / "n1.key").read_bytes()

    assert_one_line_error(run("issue", "node", "n1", "--dir", ca_dir), 1)
    assert ((ca_dir / "n1.crt").read_bytes(), (ca_dir / "n1.key").read_bytes()) == before
    ca_before = (ca_dir / "ca.key").read_bytes()
    assert_one_line_error(run("init", ca_dir), 1)
    assert (ca_dir / "ca.key").read_bytes() == ca_before

    ok("issue", "node", "n1", "--dir", ca_dir, "--force")
    assert (ca_dir / "n1.key").read_bytes() != before[1]
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key", "n1.crt", "n1.key"]


def test_issue_without_ca_says_to_run_init(tmp_path: Path) -> None:
    result = run("issue", "node", "n1", "--dir", tmp_path)
    assert_one_line_error(result, 1)
    assert f"no CA in {tmp_path}: run `certgen init {tmp_path}` first" in result.stderr


@pytest.mark.parametrize("name", ["../x", "", "a/b", "-x", ".x", "ca", "x" * 129, "é"])
def test_bad_name_is_rejected(ca_dir: Path, name: str) -> None:
    # "--" so that "-x" reaches certgen's own check rather than argparse's.
    assert_one_line_error(run("issue", "node", "--dir", ca_dir, "--", name), 2)
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key"]


def test_usage_errors_are_one_line(ca_dir: Path) -> None:
    assert_one_line_error(run("issue", "node", "-x", "--dir", ca_dir), 2)
    assert_one_line_error(run("issue", "janitor", "n1", "--dir", ca_dir), 2)
    assert_one_line_error(run("issue", "node", "n1", "--dir", ca_dir, "--san", "a b"), 2)
    assert_one_line_error(run("issue", "node", "n1", "--dir", ca_dir, "--days", "0"), 2)


def test_longest_name_is_accepted(ca_dir: Path) -> None:
    name = "n" * 128  # longer than X.509 allows in a CN, so the CN is left out
    ok("issue", "node", name, "--dir", ca_dir)
    assert uris(load(ca_dir / f"{name}.crt")) == [f"spiffe://fleet/node/{name}"]


def test_dev_makes_everything_and_is_idempotent(tmp_path: Path) -> None:
    pki = tmp_path / "dev"
    ok("dev", pki, "--node", "n1", "--node", "n2")

    ca = load(pki / "ca.crt")
    expected = {"manager": "manager", "n1": "node", "n2": "node", "admin": "admin"}
    for name, role in expected.items():
        cert = load(pki / f"{name}.crt")
        cert.verify_directly_issued_by(ca)
        assert uris(cert) == [f"spiffe://fleet/{role}/{name}"]
    for name in ("manager", "n1"):
        san = load(pki / f"{name}.crt").extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
        assert {str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)} == {
            "127.0.0.1",
            "::1",
        }
    before = {p.name: p.read_bytes() for p in pki.iterdir()}

    again = ok("dev", pki, "--node", "n1", "--node", "n2")
    assert again.stdout.count("exists, kept") == 5
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == before

    ok("dev", pki, "--node", "n1", "--force")
    assert (pki / "ca.key").read_bytes() == before["ca.key"]
    assert (pki / "n1.key").read_bytes() != before["n1.key"]
    load(pki / "n1.crt").verify_directly_issued_by(ca)


def test_dev_will_not_keep_leaves_from_another_ca(tmp_path: Path) -> None:
    pki = tmp_path / "dev"
    ok("dev", pki, "--node", "n1")
    (pki / "ca.crt").unlink()
    (pki / "ca.key").unlink()
    assert_one_line_error(run("dev", pki, "--node", "n1"), 1)


def test_ca_issues_many_in_memory(certgen: ModuleType, ca_dir: Path) -> None:
    ca = certgen.CertificateAuthority.load(ca_dir)
    certs = [x509.load_pem_x509_certificate(ca.issue("node", f"n{i}")[0]) for i in range(50)]
    assert len({c.serial_number for c in certs}) == 50
    assert uris(certs[7]) == ["spiffe://fleet/node/n7"]
    certs[7].verify_directly_issued_by(ca.cert)

    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    expired_pem, _ = ca.issue(
        "admin", "old", not_before=past, not_after=past + dt.timedelta(days=1), eku=[]
    )
    expired = x509.load_pem_x509_certificate(expired_pem)
    assert expired.not_valid_after_utc == past + dt.timedelta(days=1)
    with pytest.raises(x509.ExtensionNotFound):
        expired.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


# --- real TLS handshakes -------------------------------------------------------------------


@dataclass
class Handshake:
    """What each side of one TLS connection saw."""

    server_peer: dict[str, Any] | None = None
    server_error: BaseException | None = None
    client_got: bytes | None = None
    client_error: BaseException | None = None


def server_context(pki: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / f"{name}.crt", pki / f"{name}.key")
    ctx.load_verify_locations(pki / "ca.crt")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(pki: Path, name: str, *, ca_pki: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its hostname
    ctx.load_cert_chain(pki / f"{name}.crt", pki / f"{name}.key")
    ctx.load_verify_locations((ca_pki or pki) / "ca.crt")
    return ctx


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Handshake:
    """Connect once over loopback; the server replies b"ok" only after a full handshake."""
    seen = Handshake()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(TIMEOUT)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    seen.server_peer = tls.getpeercert()
                    tls.sendall(b"ok")
            except OSError as exc:  # ssl.SSLError included
                seen.server_error = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as raw,
                client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                seen.client_got = tls.recv(2)
        except OSError as exc:
            seen.client_error = exc
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "server side of the handshake hung"
    return seen


@pytest.fixture
def dev_pki(tmp_path: Path) -> Path:
    pki = tmp_path / "dev"
    ok("dev", pki, "--node", "node-7")
    return pki


def test_handshake_server_sees_client_identity(dev_pki: Path) -> None:
    seen = handshake(server_context(dev_pki, "manager"), client_context(dev_pki, "node-7"))

    assert seen.client_got == b"ok", seen
    assert seen.server_peer is not None
    assert ("URI", "spiffe://fleet/node/node-7") in seen.server_peer["subjectAltName"]


def test_handshake_rejects_client_from_another_ca(dev_pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ok("dev", other, "--node", "node-7")
    # The client trusts the real CA, so only the server's check of the client can fail.
    client = client_context(other, "node-7", ca_pki=dev_pki)
    seen = handshake(server_context(dev_pki, "manager"), client)

    assert isinstance(seen.server_error, ssl.SSLError), seen
    assert seen.server_peer is None and seen.client_got != b"ok"


def test_handshake_rejects_server_from_another_ca(dev_pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ok("dev", other, "--node", "node-7")
    seen = handshake(server_context(other, "manager"), client_context(dev_pki, "node-7"))

    assert isinstance(seen.client_error, ssl.SSLCertVerificationError), seen


def test_admin_cert_cannot_serve(dev_pki: Path) -> None:
    # clientAuth-only EKU: a stolen admin cert must not impersonate a Manager.
    seen = handshake(server_context(dev_pki, "admin"), client_context(dev_pki, "node-7"))
    assert isinstance(seen.client_error, ssl.SSLCertVerificationError), seen


def test_wrong_eku_client_is_rejected(certgen: ModuleType, dev_pki: Path) -> None:
    ca = certgen.CertificateAuthority.load(dev_pki)
    cert_pem, key_pem = ca.issue("node", "srv-only", eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    (dev_pki / "srv-only.crt").write_bytes(cert_pem)
    (dev_pki / "srv-only.key").write_bytes(key_pem)

    seen = handshake(server_context(dev_pki, "manager"), client_context(dev_pki, "srv-only"))
    assert isinstance(seen.server_error, ssl.SSLError), seen
    assert seen.server_peer is None


# --- issuing CAs, CSRs and the CA hash (joins) ------------------------------------------------


def test_init_prints_the_ca_hash_and_hash_reads_it_back(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    printed = ok("init", pki).stdout
    want = ca_hash(load(pki / "ca.crt"))
    assert f"CA hash (for fleet-daemon join --ca-hash): {want}" in printed
    assert ok("hash", pki).stdout.strip() == want
    assert ok("hash", pki / "ca.crt").stdout.strip() == want


def test_node_cert_from_an_issuing_ca_and_a_csr_is_trusted_via_the_root(
    dev_pki: Path, tmp_path: Path
) -> None:
    """A Manager's issuing CA signs a CSR whose key never left the 'host'; a server
    trusting only the root accepts the chain, and sees the identity the signer chose."""
    ok("intermediate", "mgr-1", "--dir", dev_pki)
    issuing = load(dev_pki / "mgr-1.crt")
    constraints = issuing.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert (dev_pki / "mgr-1.key").stat().st_mode & 0o777 == 0o600

    ca = IssuingCA.load(
        dev_pki / "mgr-1.crt", dev_pki / "mgr-1.key", roots=[load(dev_pki / "ca.crt")]
    )
    key_pem, csr_pem = make_csr("whatever-the-host-says")
    cert, chain_pem = ca.sign_node("web-9", load_csr(csr_pem), lifetime=dt.timedelta(days=2))
    assert uris(cert) == ["spiffe://fleet/node/web-9"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=2) < lifetime <= dt.timedelta(days=2, minutes=6)
    host = tmp_path / "host"
    host.mkdir()
    (host / "web-9.crt").write_bytes(chain_pem)
    (host / "web-9.key").write_bytes(key_pem)

    seen = handshake(
        server_context(dev_pki, "manager"), client_context(host, "web-9", ca_pki=dev_pki)
    )

    assert seen.client_got == b"ok", seen
    assert seen.server_peer is not None
    assert ("URI", "spiffe://fleet/node/web-9") in seen.server_peer["subjectAltName"]


def test_sign_node_starts_after_an_identity_revocation(dev_pki: Path) -> None:
    ca = IssuingCA.load(dev_pki / "ca.crt", dev_pki / "ca.key", roots=[load(dev_pki / "ca.crt")])
    assert ca.chain_pem == b""  # the root signs: nothing to send besides the leaf
    removed_at = dt.datetime.now(dt.UTC)
    cert, _ = ca.sign_node(
        "web-1",
        load_csr(make_csr("web-1")[1]),
        lifetime=dt.timedelta(hours=1),
        not_before_after=removed_at,
    )
    assert cert.not_valid_before_utc > removed_at


def test_an_old_path_length_zero_root_cannot_make_an_issuing_ca(
    certgen: ModuleType, tmp_path: Path
) -> None:
    pki = tmp_path / "old"
    ok("init", pki)
    ca = certgen.CertificateAuthority.load(pki)
    # Rebuild the root as Fleet made it before issuing CAs existed (path length 0).
    old = (
        x509.CertificateBuilder()
        .subject_name(ca.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca.cert.not_valid_before_utc)
        .not_valid_after(ca.cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    (pki / "ca.crt").write_bytes(old.public_bytes(Encoding.PEM))
    result = run("intermediate", "mgr-1", "--dir", pki)
    assert_one_line_error(result, 1)
    assert "path length 0" in result.stderr
    assert not (pki / "mgr-1.crt").exists()


def test_csr_checks_say_what_is_wrong() -> None:
    for bad, words in (
        (b"", "empty"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "PEM"),
        (b"x" * 20000, "more than"),
    ):
        with pytest.raises(ValueError, match=words):
            load_csr(bad)


def test_certgen_is_installed_as_a_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("fleet-certgen")
    assert script.exists(), "pip install should provide fleet-certgen"
    result = subprocess.run(
        [str(script), "init", str(tmp_path / "pki")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pki" / "ca.crt").exists()
