"""scripts/l10n_corpus.py on hand-made catalog entries (no download): the pairs it keeps, the package
each pair is labelled with (--sources), and .de / .en files that are the same with or without the
labels."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "l10n_corpus.py"
spec = importlib.util.spec_from_file_location("l10n_corpus", SCRIPT)
l10n_corpus = importlib.util.module_from_spec(spec)
spec.loader.exec_module(l10n_corpus)

WORDS = "file image layer brush colour window folder message branch commit".split()


def entries() -> list[tuple[str, str, str]]:
    """(package, German, English) in catalog order: distinct pairs of two packages, and the cases the
    script drops or merges."""
    out = [("gimp-data" if i % 2 else "git", f"Deutsch {i}: {w} bearbeiten", f"Edit the {w} number {i}")
           for i, w in enumerate(WORDS * 2)]
    out += [("git", "Git-Fassung des Bildes", "Edit the file number 0"),  # English seen before: the first package keeps it
            ("git", "Zu kurz", "Too short"),  # fewer than 4 English words
            ("dpkg", "same four words here", "same four words here")]  # both sides equal
    return out


def test_each_kept_pair_is_labelled_with_the_first_package_that_had_it(monkeypatch):
    monkeypatch.setattr(l10n_corpus, "SPLITS", (("test", 3), ("valid", 3)))
    splits = dict(l10n_corpus.make_splits(entries()))
    assert [len(splits[name]) for name in ("test", "valid", "train", "train30k")] == [3, 3, 14, 14]
    pairs = splits["test"] + splits["valid"] + splits["train"]
    assert sorted(e for e, _, _ in pairs) == sorted(f"Edit the {w} number {i}" for i, w in enumerate(WORDS * 2))
    expected = {e: (g, p) for p, g, e in entries()[:20]}
    assert all(expected[e] == (g, p) for e, g, p in pairs)  # "Edit the file number 0" keeps git's first German
    assert {p for _, _, p in pairs} == {"git", "gimp-data"}


def test_the_labels_change_no_pair_and_no_order(monkeypatch):
    monkeypatch.setattr(l10n_corpus, "SPLITS", (("test", 3), ("valid", 3)))
    relabelled = [("another-package", g, e) for _, g, e in entries()]
    first, second = l10n_corpus.make_splits(entries()), l10n_corpus.make_splits(relabelled)
    assert [(n, [(e, g) for e, g, _ in part]) for n, part in first] == [(n, [(e, g) for e, g, _ in part]) for n, part in second]


def test_sources_files_sit_beside_unchanged_text_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(l10n_corpus, "SPLITS", (("test", 3), ("valid", 3)))
    splits = l10n_corpus.make_splits(entries())
    l10n_corpus.write_splits(splits, tmp_path / "plain", sources=False)
    l10n_corpus.write_splits(splits, tmp_path / "labelled", sources=True)
    for name, part in splits:
        for side in ("de", "en"):
            assert (tmp_path / "plain" / f"{name}.{side}").read_bytes() == (tmp_path / "labelled" / f"{name}.{side}").read_bytes()
        assert not (tmp_path / "plain" / f"{name}.sources").exists()
        labels = (tmp_path / "labelled" / f"{name}.sources").read_text(encoding="utf-8").splitlines()
        english = (tmp_path / "labelled" / f"{name}.en").read_text(encoding="utf-8").splitlines()
        assert list(zip(english, labels)) == [(e, p) for e, _, p in part]
    assert "train: 14 pairs" in capsys.readouterr().out


def test_package_names_from_downloaded_file_names():
    assert l10n_corpus.package_name("gcc-12-locales_12.2.0-14_all") == "gcc-12-locales"
    assert l10n_corpus.package_name("libc-l10n_2.36-9+deb12u10_all") == "libc-l10n"
    assert l10n_corpus.package_name("vim-common_2%3a9.0.1378-2+deb12u2_all") == "vim-common"
