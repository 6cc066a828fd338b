"""Writes are atomic: readers see the old or the new file, never a half-written one; a failed write leaves
the old content and no temporary file."""

from __future__ import annotations

import json
import threading

import pytest

from cnn_redundancy.core.results import Result, atomic_write, make_meta


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write(tmp_path / "r.json", '{"ok": 1}')

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write('{"half')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert json.loads(path.read_text()) == {"ok": 1} and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_concurrent_writers_and_readers_never_see_invalid_json(tmp_path):
    path = tmp_path / "r.json"
    big = [Result(meta={**make_meta("m", {"values": list(range(k, k + 3000))}), "k": k}) for k in range(2)]
    big[0].save(path)
    errors: list[str] = []
    stop = threading.Event()

    def write(res):
        try:
            for _ in range(60):
                res.save(path)
        except Exception as e:  # a writer tripping over the other's temporary file
            errors.append(repr(e))
        stop.set()

    def read():
        while not stop.is_set():
            try:
                json.loads(path.read_text())
            except json.JSONDecodeError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=write, args=(r,)) for r in big] + [threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not [p for p in tmp_path.iterdir() if p.name != "r.json"]


def test_training_saves_its_checkpoint_after_every_epoch(tmp_path):
    import cnn_redundancy as cr
    from cnn_redundancy.testing import random_images

    model, calls = cr.get_model("lenet5", input_size=12, seed=0), []
    loss = __import__("torch").nn.CrossEntropyLoss()

    def step(m, batch):  # Ctrl-C in the second epoch
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        out = m(batch[0])
        return loss(out, batch[1]), out, batch[1]

    with pytest.raises(KeyboardInterrupt):
        cr.fit(model, random_images(16), epochs=3, batch_size=8, step=step, checkpoint=tmp_path / "m.pt", progress=False)
    kept = cr.load_checkpoint(tmp_path / "m.pt")
    assert len(kept.cnn_redundancy_extra["history"]["loss"]) == 1
