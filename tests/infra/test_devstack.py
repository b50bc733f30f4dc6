"""`make run`'s files (marketplace/devstack.py): DATA_DIR and what the stack writes there are
the user's only. The whole stack runs in tests/system/test_devstack.py."""

import os
import subprocess

from marketplace import devstack


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_the_data_dir_is_closed_and_the_stack_and_its_children_write_private_files(tmp_path):
    earlier = tmp_path / "data"
    earlier.mkdir()
    earlier.chmod(0o755)  # as make run left it before
    fresh = tmp_path / "new" / "data"
    before = os.umask(0o022)
    try:
        assert devstack._private_data_dir(earlier) == earlier
        devstack._private_data_dir(fresh)
        (earlier / "db.sqlite3").write_text("")  # as SQLite creates its file
        subprocess.run(["touch", str(earlier / "by-a-child")], check=True)  # the umask is inherited
    finally:
        os.umask(before)
    assert mode(earlier) == mode(fresh) == 0o700
    assert mode(earlier / "db.sqlite3") == mode(earlier / "by-a-child") == 0o600


def test_what_make_run_says_never_shows_a_store_password(capsys):
    devstack._say(
        "make run: redis at redis://svc:hunter5-pw@cache:6379/0 refused (mongodb://:x-pw@db)"
    )
    said = capsys.readouterr().out
    assert said == (
        "make run: redis at redis://svc:[redacted]@cache:6379/0 refused (mongodb://:[redacted]@db)\n"
    )
