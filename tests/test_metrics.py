"""Training metrics: JSON lines and TensorBoard events agree, a resume purges the dead run's steps, and
writing them imports no torch."""
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

from tensorboardX.crc32c import crc32c
from tensorboardX.proto.event_pb2 import Event

ROOT = Path(__file__).resolve().parents[1]


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _events(folder: Path) -> list[list[Event]]:
    """Every event of every file in folder (files in name order), TFRecord framing and CRCs checked."""
    files = []
    for path in sorted(folder.iterdir()):
        data, at, events = path.read_bytes(), 0, []
        while at < len(data):
            header = data[at:at + 8]
            (length,), (length_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[at + 8:at + 12])
            assert length_crc == _masked(crc32c(header)), path
            body = data[at + 12:at + 12 + length]
            assert struct.unpack("<I", data[at + 12 + length:at + 16 + length])[0] == _masked(crc32c(body)), path
            events.append(Event.FromString(body))
            at += 16 + length
        files.append(events)
    return files


def _scalars(events: list[Event]) -> dict[tuple[str, int], float]:
    return {(v.tag, e.step): v.simple_value for e in events if e.HasField("summary") for v in e.summary.value}


def test_resume_purges_dead_steps_and_no_torch_is_imported(tmp_path):
    # a fresh process, as a training run is: the writer must not be the one to load torch
    script = textwrap.dedent(f"""
        import sys, time
        from hopchain_jax.rl.metrics import MetricsWriter
        out = {str(tmp_path)!r}
        first = MetricsWriter(out)
        for step in (1, 2, 3):
            first.write(step, {{"loss": step * 1.0, "note": "x", "bad": float("nan")}})
        first.close()                      # the run dies after step 3; checkpoint 1 is the last one
        time.sleep(1.1)                    # event file names carry the second they were opened
        second = MetricsWriter(out)
        second.truncate_after(1)
        for step in (2, 3):
            second.write(step, {{"loss": step * 10.0}})
        second.close()
        print("torch" in sys.modules)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "False"
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["loss"]) for m in lines] == [(1, 1.0), (2, 20.0), (3, 30.0)]
    assert lines[0]["bad"] is None and lines[0]["note"] == "x"
    before, after = _events(tmp_path / "tensorboard")
    assert _scalars(before) == {("loss", 1): 1.0, ("loss", 2): 2.0, ("loss", 3): 3.0}   # NaN and text not plotted
    assert _scalars(after) == {("loss", 2): 20.0, ("loss", 3): 30.0}
    # TensorBoard drops every earlier event at step >= 2 when it reads this SessionLog START
    starts = [e.step for e in after if e.HasField("session_log") and e.session_log.status == 1]
    assert starts == [2]
    assert not [e for e in before if e.HasField("session_log")]


def test_disabled_writer_writes_nothing(tmp_path):
    from hopchain_jax.rl.metrics import MetricsWriter
    w = MetricsWriter(tmp_path / "run", enabled=False)
    w.truncate_after(3)
    w.write(1, {"loss": 1.0})
    w.close()
    assert not (tmp_path / "run").exists()
