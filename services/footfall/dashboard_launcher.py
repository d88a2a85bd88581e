"""``footfall-dashboard`` (start the Streamlit app) and ``footfall-dashboard-hash`` (login hash).

The launcher replaces itself with ``python -m streamlit run <app>`` (``os.execv``), so SIGTERM
from a container runtime reaches Streamlit directly and stops it gracefully.

Password hashes are ``scrypt$n$r$p$salt_b64$hash_b64`` (hashlib.scrypt, random 16-byte salt);
there is no default password: without ``FOOTFALL_AUTH_USERNAME`` and
``FOOTFALL_AUTH_PASSWORD_HASH`` the dashboard has no login.

After a login the browser keeps a session token (``session_token``): user, expiry and a signature
with HMAC-SHA256 under ``FOOTFALL_SESSION_SECRET``, so a reload or a new tab stays signed in until
the token expires. ``LoginThrottle`` slows password guessing per user name and for the whole
server.

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
import logging
import os
import secrets
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from footfall.observability import ctx

SCRYPT_N = 2**14  # ~16 MiB and a few tens of ms per check: slows guessing, fine for a login form
SCRYPT_R = 8
SCRYPT_P = 1
SESSION_SECRET_ENV = "FOOTFALL_SESSION_SECRET"
LOG = logging.getLogger("footfall.dashboard.login")
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


# --------------------------------------------------------------------------- signed sessions


def _signature(secret: str, payload: str) -> str:
    return hmac.new(secret.encode("utf-8"), payload.encode("utf-8"), hashlib.sha256).hexdigest()


def session_token(user: str, secret: str, ttl_s: float, now: float | None = None) -> str:
    """``<user, base64url>.<expiry, unix s>.<HMAC-SHA256>``: a cookie-safe proof of a login until expiry.

    >>> token = session_token("ana", "k" * 32, 3600, now=1000.0)
    >>> token.split(".")[:2], read_session_token(token, "k" * 32, now=2000.0)
    (['YW5h', '4600'], 'ana')
    >>> read_session_token(token, "k" * 32, now=5000.0) is None  # expired
    True
    >>> read_session_token("Ym9i" + token[4:], "k" * 32, now=2000.0) is None  # another user: forged
    True
    """
    if not secret:
        raise ValueError("the session secret is empty")
    expiry = int((time.time() if now is None else now) + ttl_s)
    payload = f"{base64.urlsafe_b64encode(user.encode('utf-8')).decode('ascii').rstrip('=')}.{expiry}"
    return f"{payload}.{_signature(secret, payload)}"


def read_session_token(token: str | None, secret: str, now: float | None = None) -> str | None:
    """The user a valid, unexpired token names, else None (constant-time signature check)."""
    parts = (token or "").split(".")
    if len(parts) != 3 or not secret:
        return None
    encoded_user, expiry, signature = parts
    if not hmac.compare_digest(_signature(secret, f"{encoded_user}.{expiry}"), signature):
        return None
    try:
        if int(expiry) <= (time.time() if now is None else now):
            return None
        return base64.urlsafe_b64decode(encoded_user + "=" * (-len(encoded_user) % 4)).decode("utf-8")
    except (ValueError, binascii.Error):
        return None


def session_secret(configured: str) -> str:
    """``FOOTFALL_SESSION_SECRET``, or a random one for this process (sessions end when it restarts)."""
    return configured or os.environ.get(SESSION_SECRET_ENV) or secrets.token_hex(32)


# --------------------------------------------------------------------------- throttling


@dataclass
class LoginThrottle:
    """Failed-login bookkeeping of one dashboard process (shared by every browser session).

    Per user name: the first ``free_failures`` failures cost nothing; each further one locks that
    name for ``base_lock_s * 2**(extra failures - 1)`` seconds (at most ``max_lock_s``). Globally:
    after ``global_failures`` failures within ``global_window_s`` seconds every login waits until
    the window has room again (parallel sessions cannot multiply the guessing rate). Attempts
    during a lock are refused without checking the password. A success clears the name's record.

    >>> throttle = LoginThrottle(free_failures=2, base_lock_s=10)
    >>> [throttle.failed("ana", now=0.0) for _ in range(3)]
    [0.0, 0.0, 10.0]
    >>> throttle.wait_s("ana", now=5.0), throttle.wait_s("bob", now=5.0)
    (5.0, 0.0)
    >>> throttle.failed("ana", now=10.0), throttle.succeeded("ana"), throttle.wait_s("ana", now=10.0)
    (20.0, None, 0.0)
    """

    free_failures: int = 5
    base_lock_s: float = 2.0
    max_lock_s: float = 900.0
    global_failures: int = 30
    global_window_s: float = 60.0
    _failures: dict[str, int] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)
    _recent: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, user: str, now: float | None = None) -> float:
        """Seconds until ``user`` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._recent and self._recent[0] <= now - self.global_window_s:
                self._recent.popleft()
            global_wait = 0.0
            if len(self._recent) >= self.global_failures:
                global_wait = self._recent[0] + self.global_window_s - now
            return max(0.0, self._locked_until.get(user, 0.0) - now, global_wait)

    def failed(self, user: str, now: float | None = None) -> float:
        """Record a failure; returns the lock (seconds) it puts on ``user``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent.append(now)
            count = self._failures.get(user, 0) + 1
            self._failures[user] = count
            extra = count - self.free_failures
            lock_s = 0.0 if extra <= 0 else float(min(self.max_lock_s, self.base_lock_s * 2 ** (extra - 1)))
            if lock_s:
                self._locked_until[user] = now + lock_s
        # the attempted name is logged (truncated, repr-escaped); the password never is
        LOG.warning("dashboard login failed", **ctx(user=user[:64], failures=count, locked_s=lock_s))
        return lock_s

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(user, None)
            self._locked_until.pop(user, None)


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
    # one secret for every session of this server; random (sessions end with the process) unless set
    os.environ[SESSION_SECRET_ENV] = session_secret(settings.session_secret)
    sys.stdout.flush()
    os.execv(command[0], command)  # Streamlit becomes this process: signals reach it directly


if __name__ == "__main__":
    main()
