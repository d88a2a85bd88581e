"""gRPC TLS and mutual TLS between the aggregator and the inference workers: ``footfall-certs``.

Settings (``GrpcTlsSettings``): the inference worker serves TLS when ``FOOTFALL_GRPC_TLS_CERT``
and ``FOOTFALL_GRPC_TLS_KEY`` are set, and requires a client certificate signed by
``FOOTFALL_GRPC_TLS_CA`` when that is set too (mutual TLS). The aggregator speaks TLS when
``FOOTFALL_GRPC_TLS_CA`` is set (the CA the workers' certificate must chain to) and presents
its own certificate and key when those are set. Files are read once, at start.

``footfall-certs DIR --host NAME ...`` writes a private CA and a server and a client
certificate signed by it (``ca.crt``, ``server.crt/.key``, ``client.crt/.key``; the CA key is
not kept: a new pair means new certificates), for compose's volume or a k8s Secret.

Example:
    >>> import tempfile
    >>> out = generate_certificates(Path(tempfile.mkdtemp()), ["inference", "127.0.0.1"])
    >>> sorted(p.name for p in out.iterdir())
    ['ca.crt', 'client.crt', 'client.key', 'server.crt', 'server.key']
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from pathlib import Path

import grpc

from footfall.config import GrpcTlsSettings


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}={path}: cannot read it ({exc.strerror})") from None


def server_credentials(settings: GrpcTlsSettings) -> grpc.ServerCredentials | None:
    """TLS (mutual when a CA is set) for the inference server, or None for plain text."""
    if not (settings.grpc_tls_cert or settings.grpc_tls_key):
        if settings.grpc_tls_ca:
            raise ValueError("FOOTFALL_GRPC_TLS_CA is set without FOOTFALL_GRPC_TLS_CERT/KEY: "
                             "the server cannot require client certificates without serving TLS")
        return None
    if not (settings.grpc_tls_cert and settings.grpc_tls_key):
        raise ValueError("set both FOOTFALL_GRPC_TLS_CERT and FOOTFALL_GRPC_TLS_KEY (or neither)")
    pair = (_read(settings.grpc_tls_key, "FOOTFALL_GRPC_TLS_KEY"),
            _read(settings.grpc_tls_cert, "FOOTFALL_GRPC_TLS_CERT"))
    ca = _read(settings.grpc_tls_ca, "FOOTFALL_GRPC_TLS_CA") if settings.grpc_tls_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(settings: GrpcTlsSettings) -> grpc.ChannelCredentials | None:
    """TLS (with a client certificate when one is set) for the aggregator's channels, or None."""
    if not settings.grpc_tls_ca:
        if settings.grpc_tls_cert or settings.grpc_tls_key:
            raise ValueError("FOOTFALL_GRPC_TLS_CERT/KEY are set without FOOTFALL_GRPC_TLS_CA: the client "
                             "needs the CA to verify the inference workers")
        return None
    if bool(settings.grpc_tls_cert) != bool(settings.grpc_tls_key):
        raise ValueError("set both FOOTFALL_GRPC_TLS_CERT and FOOTFALL_GRPC_TLS_KEY (or neither)")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.grpc_tls_ca, "FOOTFALL_GRPC_TLS_CA"),
        private_key=_read(settings.grpc_tls_key, "FOOTFALL_GRPC_TLS_KEY") if settings.grpc_tls_key else None,
        certificate_chain=_read(settings.grpc_tls_cert, "FOOTFALL_GRPC_TLS_CERT") if settings.grpc_tls_cert else None)


def generate_certificates(out: Path, hosts: list[str], days: int = 825) -> Path:
    """A private CA, a server certificate for ``hosts`` (DNS names or IPs) and a client
    certificate, written as PEM files into ``out`` (keys readable by the owner only)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    out.mkdir(parents=True, exist_ok=True)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "footfall"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def builder(subject: str, key, issuer: x509.Name) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days)))

    def write(filename: str, data: bytes, private: bool = False) -> None:
        path = out / filename
        path.write_bytes(data)
        if private:
            os.chmod(path, 0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (builder("footfall gRPC CA", ca_key, name("footfall gRPC CA"))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    write("ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    for role, usage, extra in (("server", ExtendedKeyUsageOID.SERVER_AUTH, [x509.SubjectAlternativeName(sans)]),
                               ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = builder(f"footfall {role}", key, ca.subject).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False)
        for extension in extra:
            cert = cert.add_extension(extension, critical=False)
        write(f"{role}.crt", cert.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        write(f"{role}.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), private=True)
    return out


# The names the inference workers are reached by: compose's service, k8s's headless Service.
DEFAULT_HOSTS = ["inference", "footfall-inference-headless.footfall.svc.cluster.local", "localhost", "127.0.0.1"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a private CA and gRPC server/client certificates (PEM).")
    parser.add_argument("out", type=Path, help="folder to write ca.crt, server.crt/.key, client.crt/.key into")
    parser.add_argument("--host", action="append", help=f"server name or IP (repeatable; default {DEFAULT_HOSTS})")
    parser.add_argument("--days", type=int, default=825, help="validity of the certificates")
    parser.add_argument("--keep", action="store_true", help="do nothing when the folder already holds them")
    args = parser.parse_args(argv)
    if args.keep and (args.out / "server.crt").exists():
        print(f"certificates already in {args.out}: kept")
        return
    generate_certificates(args.out, args.host or DEFAULT_HOSTS, args.days)
    print(f"wrote ca.crt, server.crt/.key, client.crt/.key to {args.out}")


if __name__ == "__main__":
    main()
