"""The put log on its own: frames as `Outbox.put` writes them (one event) and read back."""

from __future__ import annotations

from pathlib import Path

from vlmd_agent.outbox.putlog import PutLog


def test_one_event_frames_read_back_with_keys_of_any_characters(tmp_path: Path) -> None:
    path = tmp_path / "spool.db.puts"
    events = [("r/item/1/ok", '{"a":1}'), ("r/\u043a\u043b\u044e\u0447:\n", '{"b":"\u2713"}'),
              ("r/item/2/ok", '{"c":"\u00e9"}')]
    puts = PutLog(path)
    for n, event in enumerate(events):
        puts.append([event], 1790000000.5 + n)
    assert puts.size == path.stat().st_size
    assert path.read_bytes().startswith(b"1 1790000000.5\n11:r/item/1/ok{\"a\":1}\n1 ")
    puts.close()
    again = PutLog(path)
    assert again.read() == ([(text, key, 1790000000.5 + n) for n, (key, text) in
                             enumerate(events)], 0)
    again.close()


def test_a_one_event_frame_cut_short_is_dropped_whole(tmp_path: Path) -> None:
    path = tmp_path / "spool.db.puts"
    puts = PutLog(path)
    puts.append([("r/\u00e9/1", '{"a":1}')], 1790000000.0)
    whole = puts.size
    puts.append([("r/\u00e9/2", '{"a":2}')], 1790000001.0)
    puts.close()
    for _ in range(1, path.stat().st_size - whole):  # every cut inside the second frame
        path.write_bytes(path.read_bytes()[:-1])
        again = PutLog(path)
        assert again.read() == ([('{"a":1}', "r/\u00e9/1", 1790000000.0)], again.size - whole)
        again.close()
