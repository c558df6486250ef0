"""Exact and near duplicates."""

from __future__ import annotations

import pickle

import numpy as np
from scipy import ndimage as ndi

from scanqc.io.scan import Scan
from scanqc.scoring.duplicates import Fingerprint, find_duplicates, fingerprint, hamming


def image(seed, shape=(128, 128), dtype=np.uint16):
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.normal(0, 1, shape), 6)
    img = (img - img.min()) / (img.max() - img.min()) * 4000
    return img.astype(dtype)


def scan(data, sid):
    return Scan(data, (1.0,) * data.ndim, np.eye(4), "image" if data.ndim == 2 else "volume",
                modality="CR", scan_id=sid)


def test_fingerprint_is_small_and_picklable():
    fp = fingerprint(scan(image(0), "a"))
    assert isinstance(fp, Fingerprint)
    assert pickle.loads(pickle.dumps(fp)) == fp
    assert len(pickle.dumps(fp)) < 400


def test_exact_and_near_duplicates():
    base = image(0)
    noisy = (base.astype(float) + np.random.default_rng(9).normal(0, 20, base.shape)).clip(
        0).astype(np.uint16)
    rescaled = (base.astype(np.float32) * 16).astype(np.uint16)  # 12 -> 16 bit
    scans = {
        "a": base, "a_copy": base.copy(), "noisy": noisy, "rescaled": rescaled,
        "other1": image(1), "other2": image(2), "vol": np.stack([image(3)] * 5),
    }
    fps = {k: fingerprint(scan(v, k)) for k, v in scans.items()}
    assert fps["a"].exact == fps["a_copy"].exact != fps["noisy"].exact
    res = find_duplicates(fps.items())
    assert {w.code for w in res["a"]} == {"exact_duplicate", "near_duplicate"}
    assert {w.code for w in res["a_copy"]} == {"exact_duplicate", "near_duplicate"}
    assert "a_copy" in next(w for w in res["a"] if w.code == "exact_duplicate").message
    assert {w.code for w in res["noisy"]} == {"near_duplicate"}
    assert {w.code for w in res["rescaled"]} == {"near_duplicate"}
    for k in ("other1", "other2", "vol"):
        assert k not in res
    assert hamming(fps["other1"].phash, fps["other2"].phash) > 10


def test_same_pixels_different_dtype_is_not_exact():
    base = image(0)
    a = fingerprint(scan(base, "a"))
    b = fingerprint(scan(base.astype(np.int32), "b"))
    assert a.exact != b.exact
    assert find_duplicates([("a", a), ("b", b)], max_distance=0) == {}


def test_many_items_band_search_matches_bruteforce():
    rng = np.random.default_rng(5)
    fps = [(i, Fingerprint(exact=str(i), phash=int(rng.integers(0, 2**63)), shape=(1,)))
           for i in range(300)]
    # plant near copies with 1..4 flipped bits
    for k in range(1, 5):
        src = fps[k][1].phash
        flipped = src
        for b in rng.choice(64, k, replace=False):
            flipped ^= 1 << int(b)
        fps.append((1000 + k, Fingerprint(exact=f"n{k}", phash=flipped, shape=(1,))))
    res = find_duplicates(fps, max_distance=4)
    brute = {i for i, a in fps for j, b in fps if i != j and hamming(a.phash, b.phash) <= 4}
    assert set(res) == brute
    assert {1001, 1002, 1003, 1004} <= set(res)


def test_index_marks_the_later_copy_and_matches_brute_force():
    from scanqc.scoring.duplicates import DuplicateIndex, from_text, to_text

    rng = np.random.default_rng(7)
    fps = [Fingerprint(exact=f"e{i}", phash=int(rng.integers(1, 2**63)), shape=(1,))
           for i in range(200)]
    for k, src in ((1, 3), (2, 8)):  # near copies 1 and 2 bits away, added later
        flipped = fps[src].phash
        for b in rng.choice(64, k, replace=False):
            flipped ^= 1 << int(b)
        fps.append(Fingerprint(exact=f"n{k}", phash=flipped, shape=(1,)))
    fps.append(Fingerprint(exact="e5", phash=fps[5].phash, shape=(1,)))  # an exact copy of 5
    index = DuplicateIndex(max_distance=2)
    found = {i: index.add(f"scan{i}", from_text(to_text(fp))) for i, fp in enumerate(fps)}
    flagged = {i: [w.code for w in ws] for i, ws in found.items() if ws}
    assert flagged == {200: ["near_duplicate"], 201: ["near_duplicate"], 202: ["exact_duplicate"]}
    assert "scan3" in found[200][0].message and found[200][0].value == 1.0
    assert found[202][0].message == "identical pixels to scan5"
    # brute force over the earlier scans gives the same near duplicates
    brute = {j for j in range(len(fps)) for i in range(j)
             if fps[i].exact != fps[j].exact and hamming(fps[i].phash, fps[j].phash) <= 2}
    assert brute == {200, 201}
    assert DuplicateIndex(max_distance=0).add("x", fps[0]) == []
    assert from_text("") is None and from_text("abc:zz") is None


def test_a_scan_added_again_is_not_a_copy_of_itself():
    from scanqc.scoring.duplicates import DuplicateIndex

    fp = Fingerprint(exact="e1", phash=0x0F0F0F0F0F0F0F0F, shape=(1,))
    near = Fingerprint(exact="e2", phash=0x0F0F0F0F0F0F0F0E, shape=(1,))  # 1 bit away
    index = DuplicateIndex()
    assert index.add("a.dcm", fp, key="id-a") == []
    assert index.add("a.dcm", fp, key="id-a") == []  # the same scan scored again
    assert index.add("a.dcm", near, key="id-a") == []  # ... after its file changed slightly
    # another scan sharing the name (two series of one folder) is still a copy
    assert [w.code for w in index.add("a.dcm", fp, key="id-b")] == ["exact_duplicate"]
    assert [w.code for w in index.add("b.dcm", near, key="id-c")] == ["exact_duplicate"]
