"""``footfall-dashboard`` (start the Streamlit app) and ``footfall-dashboard-hash`` (login hash).

The launcher replaces itself with ``python -m streamlit run <app>`` (``os.execv``), so SIGTERM
from a container runtime reaches Streamlit directly and stops it gracefully.

Password hashes are ``scrypt$n$r$p$salt_b64$hash_b64`` (hashlib.scrypt, random 16-byte salt);
there is no default password: without ``FOOTFALL_AUTH_USERNAME`` and
``FOOTFALL_AUTH_PASSWORD_HASH`` the dashboard has no login.

Example:
    >>> encoded = hash_password("correct horse", n=2**10)
    >>> encoded.split("$")[:4]
    ['scrypt', '1024', '8', '1']
    >>> verify_password("correct horse", encoded), verify_password("wrong", encoded)
    (True, False)
    >>> verify_password("x", "not-a-hash")
    False
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys
from pathlib import Path

SCRYPT_N = 2**14  # ~16 MiB and a few tens of ms per check: slows guessing, fine for a login form
SCRYPT_R = 8
SCRYPT_P = 1
MAX_SCRYPT_N = 2**16  # hashes asking for more memory are refused (a bad value must not exhaust RAM)
_MAXMEM = 2**27


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=_MAXMEM)


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """Encode ``password`` as ``scrypt$n$r$p$salt_b64$hash_b64`` with a fresh random salt."""
    if not password:
        raise ValueError("the password is empty")
    salt = os.urandom(16)
    digest = _scrypt(password, salt, n, r, p, 32)
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return f"scrypt${n}${r}${p}${b64(salt)}${b64(digest)}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return None
    if not (1 < n <= MAX_SCRYPT_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16 and salt and
            len(expected) >= 16):
        return None
    return n, r, p, salt, expected


def is_valid_hash(encoded: str) -> bool:
    """True when ``encoded`` is a well-formed hash this module can check.

    >>> is_valid_hash(hash_password("pw", n=2**10)), is_valid_hash("scrypt$1$8$1$$")
    (True, False)
    """
    return _parse(encoded) is not None


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded`` (constant-time comparison of the digests)."""
    parsed = _parse(encoded)
    if parsed is None:
        return False
    n, r, p, salt, expected = parsed
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(expected)), expected)


def check_login(username: str, password: str, expected_username: str, encoded: str) -> bool:
    """Both the user name and the password must match; both are always checked (no timing hint)."""
    name_ok = hmac.compare_digest(username.encode("utf-8"), expected_username.encode("utf-8"))
    password_ok = verify_password(password, encoded)
    return name_ok and password_ok


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Dashboard password: ")
        if getpass.getpass("Repeat: ") != first:
            raise SystemExit("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")  # piped: the first line is the password


def hash_password_main(argv: list[str] | None = None) -> None:
    """``footfall-dashboard-hash``: read a password (prompt, or first line of stdin), print its hash."""
    parser = argparse.ArgumentParser(
        description="Print the scrypt hash for FOOTFALL_AUTH_PASSWORD_HASH. Reads the password from a "
                    "prompt, or from the first line of standard input when piped.")
    parser.parse_args(argv)
    password = _read_password()
    if not password:
        raise SystemExit("the password is empty")
    print(hash_password(password))


def app_path(configured: str = "") -> Path:
    """The Streamlit script: ``FOOTFALL_DASHBOARD_APP`` or ``<project root>/dashboard/app.py``."""
    from footfall.config import PROJECT_ROOT

    return Path(configured) if configured else PROJECT_ROOT / "dashboard" / "app.py"


def streamlit_command(app: Path, port: int, address: str, extra: list[str] | None = None) -> list[str]:
    """The ``streamlit run`` command line the launcher executes.

    >>> streamlit_command(Path("/a/app.py"), 8501, "0.0.0.0")[3:6]
    ['run', '/a/app.py', '--server.port']
    """
    return [sys.executable, "-m", "streamlit", "run", str(app),
            "--server.port", str(port), "--server.address", address,
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.showErrorDetails", "none", "--client.toolbarMode", "viewer",
            "--theme.primaryColor", "#2F5D9B",
            *(extra or [])]


def main(argv: list[str] | None = None) -> None:
    """``footfall-dashboard``: run the dashboard (settings from FOOTFALL_* variables)."""
    from footfall.config import DashboardSettings

    settings = DashboardSettings()
    parser = argparse.ArgumentParser(description="Run the Footfall dashboard (Streamlit).",
                                     epilog="Arguments after `--` go to `streamlit run`.")
    parser.add_argument("--port", type=int, default=settings.dashboard_port,
                        help="HTTP port (default FOOTFALL_DASHBOARD_PORT or 8501)")
    parser.add_argument("--address", default=settings.dashboard_address,
                        help="listening address (default FOOTFALL_DASHBOARD_ADDRESS or 0.0.0.0)")
    parser.add_argument("--app", default=settings.dashboard_app, help="Streamlit script (FOOTFALL_DASHBOARD_APP)")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    app = app_path(args.app)
    if not app.is_file():
        raise SystemExit(f"dashboard app not found: {app} (set FOOTFALL_DASHBOARD_APP)")
    command = streamlit_command(app, args.port, args.address, extra)
    sys.stdout.flush()
    os.execv(command[0], command)  # Streamlit becomes this process: signals reach it directly


if __name__ == "__main__":
    main()
