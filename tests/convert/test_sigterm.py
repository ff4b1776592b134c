"""SIGTERM during `convert` leaves neither OUT nor its temporary .part file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from loopcli.runtime.synthetic import write_synthetic

# Converts with every tensor slowed down, so that the signal lands mid-write.
SLOW_CONVERT = """
import sys, time
import loopcli.convert.export as export
encode = export.encode
export.encode = lambda job: (time.sleep(0.3), encode(job))[1]
print("converting", flush=True)
export.convert(sys.argv[1], sys.argv[2], "f16", show_progress=False)
"""


def test_sigterm_mid_conversion_leaves_no_part_file(tmp_path):
    src = write_synthetic(tmp_path / "src", dtype="f32")
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, str(src), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "converting"
    deadline = time.monotonic() + 60
    while not list(out.parent.glob("*.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(out.parent.glob("*.part")), "the conversion never started writing"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert list(out.parent.iterdir()) == []
