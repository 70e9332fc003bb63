"""The stack's PKI: what the API server's certificate names, who a client is."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from mailpipe.devstack import certs


def test_serving_certificate_names_the_kubernetes_service_ip_for_pods(tmp_path: Path) -> None:
    pki = certs.generate(tmp_path, "10.0.0.1")
    cert = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert ips == {"127.0.0.1", "10.0.0.1"}
    assert "kubernetes.default.svc.cluster.local" in sans.get_values_for_type(x509.DNSName)


def test_an_issued_client_certificate_is_signed_by_the_stack_ca(tmp_path: Path) -> None:
    pki = certs.generate(tmp_path)
    cert_path, key_path = tmp_path / "node.crt", tmp_path / "node.key"
    certs.issue_client_cert(pki, "system:node:n1", "system:nodes", cert_path, key_path)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:n1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    assert key_path.stat().st_mode & 0o077 == 0
