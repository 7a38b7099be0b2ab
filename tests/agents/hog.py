"""Test agent: holds ~argv[1] MB of memory (default 30), opens a few files, burns a bit of
CPU, and starts one child process (so the group has two members). Exits on SIGTERM."""

import signal
import subprocess
import sys
import tempfile
import time

mb = int(sys.argv[1]) if len(sys.argv) > 1 else 30
ballast = bytearray(mb * 1024 * 1024)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
files = [tempfile.TemporaryFile() for _ in range(5)]  # noqa: SIM115 - held open on purpose
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])


def bye(*_):
    child.terminate()
    sys.exit(0)


signal.signal(signal.SIGTERM, bye)
while True:
    deadline = time.monotonic() + 0.05
    while time.monotonic() < deadline:
        pass
    files[0].write(b"x" * 4096)
    files[0].flush()
    time.sleep(0.2)
