"""Throw-away certificate authorities and certificates for TLS tests, made with the ``openssl`` CLI.

    pki = Pki(tmp_path)                       # skips the test when ``openssl`` is not installed
    ca = pki.authority("ca")                  # ca.pem (its certificate), ca.key
    server = pki.issue(ca, "server")          # server.pem, server.key for localhost and 127.0.0.1
    client = pki.issue(ca, "client", hosts=())

Keys are P-256 (fast to make); certificates last a day. A minimal configuration file is passed to every
command, so the machine's ``openssl.cnf`` does not matter.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


class Pki:
    """Makes authorities and certificates under ``folder``; skips the test without ``openssl``."""

    def __init__(self, folder: Path):
        self._openssl = shutil.which("openssl")
        if self._openssl is None:
            pytest.skip("the openssl command is not installed; the TLS tests make their certificates with it")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._config = folder / "openssl.cnf"
        self._config.write_text(_CONFIG)

    def authority(self, name: str) -> Issued:
        """A self-signed CA certificate ``CN=<name>``."""
        made = Issued(self.folder / f"{name}.pem", self.folder / f"{name}.key")
        self._run(
            "req", "-x509", *self._new_key(made.key), "-subj", f"/CN={name}", "-days", "1",
            "-extensions", "ca", "-out", str(made.cert),
        )  # fmt: skip
        return made

    def issue(self, ca: Issued, name: str, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Issued:
        """A certificate ``CN=<name>`` signed by ``ca``, valid for ``hosts`` (DNS names or IP addresses)."""
        made = Issued(self.folder / f"{name}.pem", self.folder / f"{name}.key")
        request = self.folder / f"{name}.csr"
        self._run("req", "-new", *self._new_key(made.key), "-subj", f"/CN={name}", "-out", str(request))
        extensions = self.folder / f"{name}.ext"
        names = [f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts]
        lines = ["basicConstraints = critical, CA:false", "keyUsage = critical, digitalSignature"]
        if names:
            lines.append("subjectAltName = " + ", ".join(names))
        extensions.write_text("\n".join(lines) + "\n")
        self._run(
            "x509", "-req", "-in", str(request), "-CA", str(ca.cert), "-CAkey", str(ca.key),
            "-set_serial", str(secrets.randbits(63)), "-days", "1", "-extfile", str(extensions),
            "-out", str(made.cert),
        )  # fmt: skip
        return made

    def _new_key(self, key: Path) -> list[str]:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key)]

    def _run(self, *args: str) -> None:
        command = [self._openssl, *args]
        if args[0] == "req":
            command += ["-config", str(self._config)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
