"""fedsec.client.runscript runs a job's script as `python SCRIPT ARGS` would, and ends without losing anything."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def run_script(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / "custom"
    folder.mkdir(exist_ok=True)
    script = folder / "train.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-P", "-m", "fedsec.client.runscript", str(script), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_script_runs_as_main_with_its_argv_and_its_folder_first_on_the_path(tmp_path: Path) -> None:
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "helper.py").write_text("VALUE = 'from the job folder'\n")
    done = run_script(
        tmp_path,
        """
        import sys
        import helper
        print(__name__, __file__, sys.argv, sys.path[0], helper.VALUE, sep="|")
        """,
        "--epochs",
        "2",
    )
    assert done.returncode == 0, done.stderr
    script = tmp_path / "custom" / "train.py"
    assert done.stdout.strip().split("|") == [
        "__main__", str(script), str([str(script), "--epochs", "2"]), str(script.parent), "from the job folder",
    ]  # fmt: skip


@pytest.mark.parametrize(("ending", "status"), [("pass", 0), ("sys.exit()", 0), ("sys.exit(3)", 3), ("sys.exit(0)", 0)])
def test_the_exit_status_is_the_scripts(tmp_path: Path, ending: str, status: int) -> None:
    done = run_script(tmp_path, f"import sys\n{ending}\n")
    assert done.returncode == status, done.stderr


def test_an_uncaught_exception_prints_its_traceback_and_exits_1(tmp_path: Path) -> None:
    done = run_script(tmp_path, "def train():\n    raise ValueError('bad batch')\ntrain()\n")
    assert done.returncode == 1
    assert "ValueError: bad batch" in done.stderr
    assert 'train.py", line 2, in train' in done.stderr


def test_sys_exit_with_a_message_prints_it_and_exits_1(tmp_path: Path) -> None:
    done = run_script(tmp_path, "import sys\nsys.exit('no data')\n")
    assert (done.returncode, done.stderr.strip()) == (1, "no data")


def test_nothing_the_script_left_open_or_running_is_lost_at_its_end(tmp_path: Path) -> None:
    """Threads that outlive the script's body still see its globals; atexit handlers, unclosed files and
    zip files, and objects in modules of the job's folder are finalised before the process ends."""
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "store.py").write_text(
        "class Log:\n"
        "    def __init__(self, path):\n"
        "        self.path = path\n"
        "    def __del__(self):\n"
        "        open(self.path, 'w').write('module object finalised')\n"
        "LOG = None\n"
    )
    out = tmp_path / "out"
    done = run_script(
        tmp_path,
        f"""
        import atexit, sys, threading, time, zipfile
        from concurrent.futures import ThreadPoolExecutor
        import store
        OUT = {str(out)!r}
        store.LOG = store.Log(OUT + ".module")
        unclosed = open(OUT + ".txt", "w")
        unclosed.write("buffered, never closed by the script")
        archive = zipfile.ZipFile(OUT + ".zip", "w")
        archive.writestr("metrics.json", "{{}}")
        pool = ThreadPoolExecutor(2)
        pool.submit(lambda: None).result()
        def late():
            time.sleep(0.5)
            open(OUT + ".thread", "w").write("saw " + OUT)
        threading.Thread(target=late).start()
        atexit.register(lambda: open(OUT + ".atexit", "w").write("ran"))
        sys.exit(5)
        """,
    )
    assert done.returncode == 5, done.stderr
    assert done.stderr == ""
    assert (tmp_path / "out.txt").read_text() == "buffered, never closed by the script"
    assert zipfile.ZipFile(tmp_path / "out.zip").read("metrics.json") == b"{}"
    assert (tmp_path / "out.thread").read_text() == f"saw {out}"
    assert (tmp_path / "out.atexit").read_text() == "ran"
    assert (tmp_path / "out.module").read_text() == "module object finalised"


def test_without_a_script_it_says_how_to_use_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-m", "fedsec.client.runscript"], env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "usage: python -P -m fedsec.client.runscript SCRIPT" in done.stderr
