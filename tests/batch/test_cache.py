from __future__ import annotations

import os

import numpy as np

from scanqc.batch.cache import ResultCache, content_key, file_key


def test_content_key_tracks_content_size_and_mtime(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 100)
    k1 = content_key([str(f)])
    assert content_key([str(f)]) == k1
    st = f.stat()
    f.write_bytes(b"y" * 100)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime, new bytes
    assert content_key([str(f)]) != k1
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_key(f).split(":")[1] == str(st.st_mtime_ns + 10**9)
    assert content_key([str(tmp_path / "missing")]) != content_key([str(f)])


def test_large_file_key_reads_the_edges(tmp_path):
    f = tmp_path / "big.bin"
    data = bytearray(3 * 1024 * 1024)
    f.write_bytes(bytes(data))
    k = file_key(f)
    data[-1] = 1  # the last MiB is hashed
    f.write_bytes(bytes(data))
    assert file_key(f).split(":")[2] != k.split(":")[2]


def test_put_get_roundtrip_persists(tmp_path):
    db = tmp_path / "c.sqlite"
    c = ResultCache(db, commit_every=100)
    vec = np.arange(8, dtype=np.float32)
    c.put("id1", "ck", "m@1", "ref", "cfg", {"scan_id": "id1", "bad_score": 0.25}, vec)
    c.put("id2", "ck2", "m@1", "ref", "cfg", {"scan_id": "id2", "status": "error"})
    c.close()
    c = ResultCache(db)
    row, v = c.get("id1", "ck", "m@1", "ref", "cfg")
    assert row["bad_score"] == 0.25 and np.array_equal(v, vec)
    assert c.get("id2", "ck2", "m@1", "ref", "cfg")[1] is None
    # any key part differing is a miss
    assert c.get("id1", "ck", "m@2", "ref", "cfg") is None
    assert c.get("id1", "ck", "m@1", "other", "cfg") is None
    assert c.get("id1", "ck", "m@1", "ref", "cfg2") is None
    assert len(c) == 2
    c.close()
