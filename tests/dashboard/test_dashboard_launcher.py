"""`footfall-dashboard` (exec of `streamlit run`, SIGTERM) and `footfall-dashboard-hash`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from footfall import dashboard_launcher as launcher
from footfall.config import PROJECT_ROOT
from footfall.embedded_redis import free_port

from .conftest import DASHBOARD_ENV


def test_hash_round_trip_and_salt():
    first, second = launcher.hash_password("pa55 word"), launcher.hash_password("pa55 word")
    assert first != second  # random salt
    assert first.startswith(f"scrypt${launcher.SCRYPT_N}$8$1$")
    assert launcher.verify_password("pa55 word", first) and launcher.verify_password("pa55 word", second)
    assert not launcher.verify_password("pa55 wordx", first)
    assert launcher.check_login("ana", "pa55 word", "ana", first)
    assert not launcher.check_login("bob", "pa55 word", "ana", first)
    with pytest.raises(ValueError):
        launcher.hash_password("")


@pytest.mark.parametrize("bad", ["", "scrypt$16384$8$1$abc", "bcrypt$1$2$3$YQ==$YQ==",
                                 "scrypt$1048576$8$1$c2FsdA==$" + "A" * 44,  # too much memory: refused
                                 "scrypt$16384$8$1$!!$YQ=="])
def test_malformed_hashes_never_match(bad):
    assert not launcher.is_valid_hash(bad)
    assert not launcher.verify_password("anything", bad)


def test_hash_command_reads_stdin():
    result = subprocess.run([sys.executable, "-c", "from footfall.dashboard_launcher import hash_password_main;"
                             "hash_password_main()"], input="my secret\n", capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    encoded = result.stdout.strip()
    assert launcher.verify_password("my secret", encoded)
    empty = subprocess.run([sys.executable, "-c", "from footfall.dashboard_launcher import hash_password_main;"
                            "hash_password_main()"], input="\n", capture_output=True, text=True, timeout=30)
    assert empty.returncode != 0 and "empty" in empty.stderr


def test_command_line_and_app_override(monkeypatch, tmp_path):
    assert launcher.app_path() == PROJECT_ROOT / "dashboard" / "app.py"
    assert launcher.app_path(str(tmp_path / "x.py")) == tmp_path / "x.py"
    command = launcher.streamlit_command(PROJECT_ROOT / "dashboard" / "app.py", 8123, "127.0.0.1", ["--x", "1"])
    joined = " ".join(command)
    for part in ("-m streamlit run", "--server.port 8123", "--server.address 127.0.0.1", "--server.headless true",
                 "--browser.gatherUsageStats false", "--x 1"):
        assert part in joined
    monkeypatch.setenv("FOOTFALL_DASHBOARD_APP", str(tmp_path / "missing.py"))
    with pytest.raises(SystemExit, match="not found"):
        launcher.main([])


def test_launcher_serves_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in DASHBOARD_ENV}
    env.update(FOOTFALL_DATABASE_URL=f"sqlite:///{tmp_path / 'none.db'}", FOOTFALL_DASHBOARD_PORT=str(port),
               FOOTFALL_DASHBOARD_ADDRESS="127.0.0.1", HOME=str(tmp_path))
    process = subprocess.Popen([sys.executable, "-m", "footfall.dashboard_launcher"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as reply:
                    assert reply.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "not healthy in 30 s"
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
