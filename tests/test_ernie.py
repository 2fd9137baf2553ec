"""ERNIE's knowledge masking (Sun et al., 2019): Brown's entity and phrase spans from its
tags, their alignment with WordPiece pieces, masking by level, the ernie schedule, and the
span probe of the mlm task."""
import json
import shutil

import numpy as np
import pytest
import torch

from qkv import cli, data
from qkv.config import ConfigError, from_dict
from qkv.data import brown
from qkv.data.errors import DataError
from qkv.data.mlm import (ENTITY, IGNORE, PHRASE, WORD, Masker, span_of_tokens, unit_flags, unit_ids,
                          unit_starts)
from qkv.tasks.mlm import MaskedLanguageModelTask, MLMDataConfig, window_starts
from qkv.tasks.span_probe import span_probe, span_windows
from qkv.tokenizers import WordPieceTokenizer
from qkv.train import run as train_run
from qkv.train.config import load_run_config

from .conftest import FIXTURES, ROOT
from .test_mlm import TINY_MLM

ERNIE_CONFIG = ROOT / "configs" / "bert-mlm-ernie.toml"

# Three sentences of the fixture (ca01, ca01, cj01), tagged as the corpus has them.
FULTON = ("The/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at investigation/nn "
          "of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` no/at evidence/nn ''/'' "
          "that/cs any/dti irregularities/nns took/vbd place/nn ./.")
PYE = ("The/at September-October/np term/nn jury/nn had/hvd been/ben charged/vbn by/in Fulton/np-tl "
       "Superior/jj-tl Court/nn-tl Judge/nn-tl Durwood/np Pye/np to/to investigate/vb reports/nns of/in "
       "possible/jj ``/`` irregularities/nns ''/'' in/in the/at hard-fought/jj primary/nn which/wdt was/bedz "
       "won/vbn by/in Mayor-nominate/nn-tl Ivan/np Allen/np Jr./np ./.")
MOON = ("The/at results/nns of/in present/jj observations/nns of/in the/at thermal/jj radio/nn emission/nn "
        "of/in the/at moon/nn are/ber consistent/jj with/in the/at very/ql low/jj thermal/jj conductivity/nn "
        "of/in the/at surface/nn layer/nn which/wdt was/bedz derived/vbn from/in the/at variation/nn in/in "
        "the/at infrared/jj emission/nn during/in eclipses/nns (/( e.g./rb ,/, Garstung/np ,/, 1958/cd )/) ./.")
EXPECTED = {  # by hand, from the tag patterns in qkv/data/brown.py
    FULTON: {"entity": ["Fulton", "Atlanta's"],
             "phrase": ["The Fulton County Grand Jury", "an investigation", "of Atlanta's recent primary election",
                        "no evidence", "any irregularities"]},
    PYE: {"entity": ["September-October", "Fulton", "Durwood Pye", "Ivan Allen Jr."],
          "phrase": ["The September-October term jury", "by Fulton Superior Court Judge Durwood Pye",
                     "in the hard-fought primary", "by Mayor-nominate Ivan Allen Jr."]},
    MOON: {"entity": ["Garstung"],
           "phrase": ["The results", "of present observations", "of the thermal radio emission", "of the moon",
                      "low thermal conductivity", "of the surface layer", "from the variation",
                      "in the infrared emission", "during eclipses"]},
}


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def brown_folder(data_root):
    return data.get("brown", source=FIXTURES / "brown", log=quiet)


@pytest.fixture(scope="module")
def tokenizer(brown_folder):
    text = (brown_folder / "train.txt").read_text(encoding="utf-8")
    return WordPieceTokenizer.train(text.splitlines(), vocab_size=400)


def test_brown_tags_give_entity_and_phrase_spans():
    fixture = (FIXTURES / "brown" / "ca01").read_text() + (FIXTURES / "brown" / "cj01").read_text()
    for sentence, expected in EXPECTED.items():
        assert sentence in fixture
        text, spans = brown.annotate(sentence)
        assert text == brown.detokenize(sentence)
        assert {level: [text[a:b] for a, b in spans[level]] for level in spans} == expected
    # a document: offsets run on across sentences and paragraphs
    text, spans = brown.annotate(f"\n\n\t{FULTON}\n{PYE}\n\n\n\t{MOON}\n")
    assert text == brown.detokenize(f"\n\n\t{FULTON}\n{PYE}\n\n\n\t{MOON}\n") and text.count("\n") == 1
    assert [text[a:b] for a, b in spans["entity"]] == [e for s in EXPECTED for e in EXPECTED[s]["entity"]]
    assert text[slice(*spans["entity"][-1])] == "Garstung" and "(e.g., Garstung, 1958)." in text
    assert brown.word_class("NN-TL-HL") == "N" and brown.word_class("nn+bez") == brown.word_class("fw-nn") == "."


def test_prepared_brown_keeps_spans_beside_its_text(brown_folder):
    by_id = brown.document_spans(brown_folder)
    for split in brown.SPLITS:
        text = (brown_folder / f"{split}.txt").read_text(encoding="utf-8")
        spans = brown.split_spans(brown_folder, split)
        docs = brown.documents(brown_folder, split)
        for level in brown.LEVELS:
            in_docs = [d["text"][a:b] for d in docs for a, b in by_id[d["id"]][level]]
            assert [text[a:b] for a, b in spans[level]] == in_docs
            assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans[level], spans[level][1:]))  # sorted, disjoint
    ca01 = next(d for d in brown.documents(brown_folder, "test") if d["id"] == "ca01")
    assert [ca01["text"][a:b] for a, b in by_id["ca01"]["entity"][:4]] == ["Fulton", "Atlanta's", "Atlanta",
                                                                          "September-October"]
    counts = {level: sum(len(s[level]) for s in by_id.values()) for level in brown.LEVELS}
    assert counts["entity"] > 150 and counts["phrase"] > 1000, counts


def test_brown_prepared_without_spans_stays_prepared_and_says_how_to_add_them(brown_folder, tmp_path):
    old = tmp_path / "brown"
    shutil.copytree(brown_folder, old)
    (old / brown.SPANS).unlink()  # as the code before spans prepared it
    train = (old / "train.txt").read_bytes()
    assert brown.is_prepared(old) and brown.documents(old, "val")
    with pytest.raises(DataError, match="qkv data get brown"):
        brown.split_spans(old, "train")
    logged = []
    data.get("brown", root=tmp_path, source=FIXTURES / "brown", log=logged.append)
    assert "preparing again" in logged[0] and (old / brown.SPANS).is_file()
    assert (old / "train.txt").read_bytes() == train


def test_spans_align_with_wordpiece_pieces(tokenizer):
    assert span_of_tokens([(0, 3), (4, 7), (7, 9), (10, 12)], [(4, 9)]).tolist() == [-1, 0, 0, -1]
    assert span_of_tokens([(0, 3), (4, 7)], []).tolist() == [-1, -1]
    assert unit_starts(np.array([1, 0, 1, 1, 0, 1], bool), np.array([-1, -1, 0, 0, 0, -1])).tolist() == \
        [True, False, True, False, False, True]

    text, spans = brown.annotate(FULTON)
    ids, flags = unit_flags(text, spans, tokenizer)
    offsets = tokenizer.tokenizer.encode(text, add_special_tokens=False).offsets
    assert ids.tolist() == tokenizer.encode(text) and len(flags) == len(ids)
    for a, b in spans["entity"] + spans["phrase"]:  # a span's pieces are those of its text
        inside = [i for i, (start, _) in enumerate(offsets) if a <= start < b]
        assert ids[inside].tolist() == tokenizer.encode(text[a:b])

    def units(level):
        ids_ = unit_ids(flags, level)
        return [text[offsets[np.flatnonzero(ids_ == u)[0]][0]:offsets[np.flatnonzero(ids_ == u)[-1]][1]]
                for u in range(ids_[-1] + 1)]

    words = ["Fulton", "County", "Grand", "Jury", "said", "Friday", "an", "investigation", "of"]
    after = ["recent", "primary", "election", "produced", '"', "no", "evidence", '"', "that", "any",
             "irregularities", "took", "place", "."]
    assert units("whole_word") == ["The", *words, "Atlanta", "'", "s", *after]
    assert units("entity") == ["The", *words, "Atlanta's", *after]
    assert units("phrase") == ["The Fulton County Grand Jury", "said", "Friday", "an investigation",
                               "of Atlanta's recent primary election", "produced", '"', "no evidence", '"', "that",
                               "any irregularities", "took", "place", "."]
    assert flags[0] == WORD | PHRASE | ENTITY and flags[1] == WORD | ENTITY  # "the" "fulton"
    assert unit_flags(text, {}, tokenizer)[1].tolist() == (tokenizer.word_starts()[ids] * 7).tolist()


def stream(folder, tokenizer, n=30, repeat=8):
    """Windows of the fixture's Brown training text, wrapped, each row repeated (rows are
    masked independently), and their unit flags."""
    text = (folder / "train.txt").read_text(encoding="utf-8")
    ids, flags = unit_flags(text, brown.split_spans(folder, "train"), tokenizer)
    rows = len(ids) // n
    ids = torch.from_numpy(ids[: rows * n]).view(rows, n).repeat(repeat, 1)
    flags = np.tile(flags[: rows * n].reshape(rows, n), (repeat, 1))
    cls = torch.full((len(ids), 1), tokenizer.cls_token_id)
    sep = torch.full((len(ids), 1), tokenizer.sep_token_id)
    return torch.cat([cls, ids, sep], dim=1), flags


@pytest.mark.parametrize("level", ["token", "whole_word", "phrase", "entity"])
def test_each_level_masks_15_percent_in_whole_units_80_10_10_per_unit(brown_folder, tokenizer, level):
    ids, flags = stream(brown_folder, tokenizer)
    starts = torch.ones_like(ids, dtype=torch.bool) if level == "token" else window_starts(flags, [level] * len(ids))
    masker = Masker.for_tokenizer(tokenizer)
    inputs, labels = masker(ids, torch.Generator().manual_seed(3), starts=starts)
    selected, can = labels != IGNORE, masker.candidates(ids)
    assert abs(selected.sum().item() / can.sum().item() - 0.15) < 0.02  # ~0.15 of the tokens, at every level
    never = ~can                                                           # [CLS], [SEP]
    assert never.sum() == 2 * len(ids) and not selected[never].any() and torch.equal(inputs[never], ids[never])
    assert torch.equal(labels[selected], ids[selected])

    begins = (starts | never).long()  # a window's first piece may continue a unit: it goes with [CLS]
    unit = torch.cumsum(begins, dim=1) + ids.size(1) * torch.arange(len(ids))[:, None]  # unique per row
    picked, sizes = torch.unique(unit[selected], return_counts=True)
    assert torch.equal(sizes, torch.bincount(unit[can])[picked])          # a unit is selected whole or not at all
    per_unit = torch.unique(unit[selected], return_inverse=True)[1]
    masks = torch.bincount(per_unit, weights=(inputs[selected] == tokenizer.mask_token_id).double())
    same = torch.bincount(per_unit, weights=(inputs[selected] == ids[selected]).double())
    masked, kept = masks == sizes, same == sizes
    assert ((masks == 0) | masked).all()                                   # one choice for the whole unit
    shares = [x.double().mean().item() for x in (masked, ~masked & ~kept, kept)]
    assert abs(shares[0] - 0.8) < 0.04 and abs(shares[1] - 0.1) < 0.03 and abs(shares[2] - 0.1) < 0.03, shares
    if level in ("phrase", "entity"):
        assert sizes.float().mean() > 1.5  # real multi-piece units were masked


def test_entities_and_phrases_are_masked_together(brown_folder, tokenizer):
    ids, flags = stream(brown_folder, tokenizer, repeat=4)
    for level, bit in (("entity", ENTITY), ("phrase", PHRASE)):
        _, labels = Masker.for_tokenizer(tokenizer)(ids, torch.Generator().manual_seed(0),
                                                    starts=window_starts(flags, [level] * len(ids)))
        several_words = 0
        for row in range(len(ids)):
            unit = np.cumsum((flags[row] & bit) != 0)
            sel = (labels[row, 1:-1] != IGNORE).numpy()
            for u in np.unique(unit[sel]):
                assert sel[unit == u].all()
                several_words += ((flags[row][unit == u] & WORD) != 0).sum() > 1
        assert several_words > 10, level  # e.g. "Durwood Pye", "Atlanta's", "in the hard-fought primary"


@pytest.fixture(scope="module")
def ernie_task(brown_folder, tmp_path_factory):
    run = load_run_config(ERNIE_CONFIG, TINY_MLM + ["train.grad_accum=2"])
    run = MaskedLanguageModelTask.resolve(run)
    return MaskedLanguageModelTask.for_training(run, tmp_path_factory.mktemp("ernie-task"))


def test_ernie_schedule_goes_word_phrase_entity_in_thirds_of_the_steps(ernie_task):
    # batch_size 8, grad_accum 2: 16 samples a step; max_steps 6: two steps a stage
    levels = [ernie_task.level_of(i) for i in range(6 * 16)]
    assert levels == ["whole_word"] * 32 + ["phrase"] * 32 + ["entity"] * 32
    assert ernie_task.level_of(10_000) == "entity"
    plain = MaskedLanguageModelTask(ernie_task.run, ernie_task.model, ernie_task.tokenizer)
    plain.data.masking = "phrase"
    assert plain.level_of(0) == plain.level_of(95) == "phrase"


def test_ernie_batches_are_a_pure_function_of_the_sample_index(ernie_task):
    for first in (0, 40, 88):  # one micro-batch in each stage
        a, b = ernie_task.batches(first, 8), ernie_task.batches(first, 8)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(ernie_task.batches(0, 8)[1], ernie_task.batches(8, 8)[1])
    # the entity stage's batches select whole entities of the windows they hold
    n = ernie_task.windows.seq_len
    for first in range(64, 96, 8):
        labels = ernie_task.batches(first, 8)[1][:, 1:-1].numpy()
        flags = ernie_task.flags[ernie_task.windows.starts(first, 8)[:, None] + np.arange(n)]
        for row in range(8):
            unit = np.cumsum((flags[row] & ENTITY) != 0)
            sel = labels[row] != IGNORE
            assert all(sel[unit == u].all() for u in np.unique(unit[sel]))


def test_masking_config_and_its_older_spelling():
    assert from_dict(MLMDataConfig, {"whole_word": True}, where="data").masking == "whole_word"
    assert from_dict(MLMDataConfig, {}, where="data").masking == "token"
    with pytest.raises(ConfigError, match="token, whole_word, phrase, entity, ernie"):
        from_dict(MLMDataConfig, {"masking": "span"}, where="data")
    with pytest.raises(ConfigError, match="contradicts data.masking = 'ernie'"):
        from_dict(MLMDataConfig, {"masking": "ernie", "whole_word": True}, where="data")
    small = (ROOT / "configs" / "bert-mlm-small.toml").read_text()
    ernie = (ROOT / "configs" / "bert-mlm-ernie.toml").read_text()
    assert 'masking = "token"' in small and 'masking = "ernie"' in ernie
    assert [line for line in ernie.splitlines() if line.startswith("corpora")] == \
        [line for line in small.splitlines() if line.startswith("corpora")]


class Parrot(torch.nn.Module):
    """A stand-in masked LM: it predicts the original piece, except for ids divisible by ``miss``."""

    def __init__(self, vocab_size, miss):
        super().__init__()
        self.vocab_size, self.miss = vocab_size, miss
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, inputs, attention_mask=None, *, labels):
        target = labels[labels != IGNORE]
        guess = torch.where(target % self.miss == 0, (target + 1) % self.vocab_size, target)
        return torch.nn.functional.one_hot(guess, self.vocab_size).float(), None


def test_span_probe_needs_every_piece_of_a_span(brown_folder, tokenizer):
    by_id = brown.document_spans(brown_folder)
    docs = [(d["text"], by_id[d["id"]]["phrase"]) for d in brown.documents(brown_folder, "val")]
    examples = [e for text, spans in docs for e in span_windows(text, spans, tokenizer, 30)]
    assert len(examples) > 50 and all(len(ids) == 30 and 0 <= a < b <= 30 for ids, a, b in examples)
    pieces = [ids[a:b] for ids, a, b in examples]
    assert [tokenizer.decode(p) for p in pieces[:2]] == [tokenizer.decode(tokenizer.encode(docs[0][0][a:b]))
                                                         for a, b in docs[0][1][:2]]
    result = span_probe(Parrot(tokenizer.vocab_size, miss=4), tokenizer, docs, seq_len=32, batch_size=7)
    assert result["spans"] == len(examples)
    assert result["span_accuracy"] == pytest.approx(np.mean([all(p % 4 for p in s) for s in pieces]))
    assert result["token_accuracy"] == pytest.approx(np.mean([p % 4 > 0 for s in pieces for p in s]))
    assert 0 < result["span_accuracy"] < 1 and 0 < result["token_accuracy"] < 1
    perfect = span_probe(Parrot(tokenizer.vocab_size, miss=10**9), tokenizer, docs, seq_len=32)
    assert perfect["span_accuracy"] == perfect["token_accuracy"] == 1
    assert span_probe(Parrot(tokenizer.vocab_size, miss=4), tokenizer, docs, seq_len=32, limit=5)["spans"] == 5


@pytest.fixture(scope="module")
def ernie_run(brown_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ernie"
    train_run.train(ERNIE_CONFIG, TINY_MLM + [f"out_dir={out}"], progress=False)
    return out


def test_mlm_task_trains_with_ernie_masking_and_reports_span_accuracy(ernie_run, capsys):
    records = [json.loads(line) for line in (ernie_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_mlm_acc" in r] == [3, 6]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    results = train_run.evaluate_run(ernie_run, "val")
    for level in ("entity", "phrase"):
        assert 0 <= results[f"{level}_span_accuracy"] <= 1 and 0 <= results[f"{level}_token_accuracy"] <= 1
        assert results[f"{level}_spans"] > 0
    assert results["phrase_spans"] > results["entity_spans"] and 0 <= results["masked_accuracy"] <= 1
    few = train_run.evaluate_run(ernie_run, "test", probe_spans=4)
    assert few["entity_spans"] == few["phrase_spans"] == 4
    assert "entity_spans" not in train_run.evaluate_run(ernie_run, "test", probe_spans=0)
    capsys.readouterr()
    assert cli.main(["evaluate", str(ernie_run), "--split", "val", "--probe-spans", "3"]) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert printed["entity_spans"] == printed["phrase_spans"] == "3" and "entity_span_accuracy" in printed
