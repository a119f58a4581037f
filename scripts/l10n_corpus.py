"""A real German-English corpus from the translations that Debian packages ship, for measuring the
trainer where no public corpus can be downloaded (only the Debian archive is reachable).

Each package's ``/usr/share/locale/de/LC_MESSAGES/*.mo`` catalogs pair English interface and
message strings with their human German translations (the same kind of data as the OPUS GNOME and
KDE corpora). The script downloads the packages below with ``apt-get download`` (no root, nothing
installed), reads every German catalog, strips markup, accelerators and surrounding space, keeps
pairs with 4 to 60 English words whose sides differ, deduplicates on the English side, shuffles with
a fixed seed and writes test (1000), valid (1000) and train splits as PREFIX.de / PREFIX.en, plus
train30k, the first 30,000 training pairs. With ``--sources`` it also writes PREFIX.sources: the
package each pair of the split came from (the first package, in the order of the package files'
names, whose catalog had its English side), one name per line in the order of the pairs; the .de and
.en files are the same with or without it, so that the corpus can be cut into domains by package
(``scripts/domain_adaptation.py --task nmt``).

    python scripts/l10n_corpus.py data/l10n     # then: l2fast train --config configs/small.json
                                                #   --train data/l10n/train30k --valid data/l10n/valid ...
"""
from __future__ import annotations

import argparse
import gettext
import random
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = """gcc-12-locales libc-l10n gnome-control-center-data evolution-common inkscape gimp-data gimp kdenlive-data
digikam-data libreoffice-l10n-de gnucash-common vlc-l10n gnumeric-common freeciv-data gramps audacity-data git apt dpkg
aptitude-common mc-data vim-common calligra-data gnome-games-app evolution-data-server-common nautilus-data
gnome-shell-common thunar-data xfce4-panel plasma-workspace-data kwin-data scribus-data""".split()
SPLITS = (("test", 1000), ("valid", 1000))
SEED = 1


def package_name(deb_stem: str) -> str:
    """The package of a downloaded file's name without .deb: NAME_VERSION_ARCH (the version's epoch colon
    escaped as %3a)."""
    return deb_stem.split("_", 1)[0]


def catalogs(debs: Path, unpacked: Path) -> list[tuple[str, Path]]:
    """(package, path) of the German .mo files of the downloaded packages, unpacked with dpkg-deb, in the
    order of the paths."""
    for deb in sorted(debs.glob("*.deb")):
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
        with tempfile.TemporaryFile() as f:
            f.write(tar)
            f.seek(0)
            with tarfile.open(fileobj=f) as archive:
                members = [m for m in archive.getmembers() if re.search(r"/locale/de/LC_MESSAGES/[^/]+\.mo$", m.name)]
                archive.extractall(unpacked / deb.stem, members=members, filter="data")
    return [(package_name(path.relative_to(unpacked).parts[0]), path) for path in sorted(unpacked.glob("**/*.mo"))]


def clean(text: str) -> str:
    text = re.sub(r"<[^>]+>", " ", text)  # markup
    text = text.replace("_", "").replace("&", "")  # keyboard accelerators
    return re.sub(r"\s+", " ", text).strip()


def pairs_from(catalog: Path) -> list[tuple[str, str]]:
    """(German, English) pairs of one catalog: singular forms only, message contexts dropped."""
    with open(catalog, "rb") as f:
        entries = gettext.GNUTranslations(f)._catalog
    out = []
    for english, german in entries.items():
        if isinstance(english, tuple):  # plural forms: (msgid, n)
            if english[1] != 0:
                continue
            english = english[0]
        english = english.split("\x04", 1)[-1]  # "context\x04message"
        if english and german:
            out.append((clean(german), clean(english)))
    return out


def make_splits(labelled: list[tuple[str, str, str]]) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(split name, [(English, German, package)]) of every output file, from (package, German, English) in
    catalog order: the pairs kept (4 to 60 English words, sides that differ), the first of each English
    side, sorted on the English side, shuffled with SEED and dealt into SPLITS, train and train30k."""
    by_english: dict[str, tuple[str, str]] = {}
    for package, german, english in labelled:
        if 4 <= len(english.split()) <= 60 and german != english:
            by_english.setdefault(english, (german, package))
    pairs = [(english, german, package) for english, (german, package) in sorted(by_english.items())]
    random.Random(SEED).shuffle(pairs)
    start = 0
    splits = []
    for name, size in SPLITS:
        splits.append((name, pairs[start:start + size]))
        start += size
    return splits + [("train", pairs[start:]), ("train30k", pairs[start:start + 30000])]


def write_splits(splits: list[tuple[str, list[tuple[str, str, str]]]], out: Path, sources: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, part in splits:
        (out / f"{name}.en").write_text("".join(e + "\n" for e, _, _ in part), encoding="utf-8")
        (out / f"{name}.de").write_text("".join(g + "\n" for _, g, _ in part), encoding="utf-8")
        if sources:
            (out / f"{name}.sources").write_text("".join(p + "\n" for _, _, p in part), encoding="utf-8")
        print(f"{name}: {len(part)} pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--sources", action="store_true", help="also write SPLIT.sources: the package of each "
                        "pair, one per line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        debs = Path(tmp) / "debs"
        debs.mkdir()
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
        labelled = [(package, german, english) for package, catalog in catalogs(debs, Path(tmp) / "unpacked")
                    for german, english in pairs_from(catalog)]
    write_splits(make_splits(labelled), args.out, args.sources)


if __name__ == "__main__":
    main()
