"""The leak guard (tests/leaks.py, run by conftest after every module) finds what it guards."""

from __future__ import annotations

import subprocess

import psutil

from tests import leaks


def test_a_detached_process_left_in_a_test_dir_is_found_and_stopped(tmp_path):
    older = subprocess.Popen(["sleep", "300"], cwd=tmp_path)  # started before the module "began"
    before = leaks.snapshot()
    # daemonized as the embedded graph server is: detached from its starter, working in the test dir
    subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 &"], cwd=tmp_path, check=True)
    found = leaks.leaked(before, [tmp_path.resolve()])
    try:
        assert [p.cmdline() for p in found] == [["sleep", "300"]]
        assert found[0].pid != older.pid and found[0].ppid() != older.pid
        leaks.stop(found)
        assert not psutil.pid_exists(found[0].pid) or found[0].status() == psutil.STATUS_ZOMBIE
        assert leaks.leaked(before, [tmp_path.resolve()]) == []
    finally:
        older.kill()
        older.wait()
