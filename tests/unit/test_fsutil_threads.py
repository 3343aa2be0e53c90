"""write_atomic from several threads of one process at once (the daemon starts bots in threads:
two VM bots on a fresh cache both write the same initramfs): no error, and the file is whole."""

from __future__ import annotations

import threading
from pathlib import Path

from clawpen.fsutil import write_atomic


def test_threads_writing_one_file_at_once_neither_fail_nor_tear_it(tmp_path: Path) -> None:
    target = tmp_path / "initrd.cpio.gz"
    data = {i: bytes([i]) * (4 << 20) for i in range(1, 9)}  # big enough for the writes to overlap
    errors: list[BaseException] = []
    start = threading.Barrier(len(data))

    def write(i: int) -> None:
        start.wait()
        try:
            write_atomic(target, data[i])
        except BaseException as e:  # collected for the assertion
            errors.append(e)

    for _ in range(5):
        threads = [threading.Thread(target=write, args=(i,)) for i in data]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        got = target.read_bytes()
        assert got in data.values(), (len(got), set(got[:1] + got[-1:]))
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left
