"""A real English corpus for the language model, from documentation that Debian packages ship, for
measuring the trainer where no public corpus can be downloaded (only the Debian archive is reachable).

The text is the prose of three manuals, every one under a free licence that allows redistribution:

- the Python 3.11 documentation (``python3.11-doc``; Python Software Foundation License),
- The Debian Administrator's Handbook (``debian-handbook``, English only; GPL-2+ or CC BY-SA 3.0),
- the Debian Reference (``debian-reference-en``; GPL-2+).

The script downloads the pinned package versions below with ``apt-get download`` (no root, nothing
installed), reads the paragraphs of every English HTML page (``<p>`` and DocBook's ``<div
class="para">``, with code blocks left out), keeps paragraphs of at least 8 words, drops repeated
paragraphs, and makes each page one document: its paragraphs one per line, documents separated by a
blank line (``--documents paragraphs``). Pages are shuffled with a fixed seed and dealt into test and
valid (about 300 KB of text each) and train. The same package versions give byte-identical files;
a version the archive no longer has stops the script with apt's message (update PACKAGES, and say so
beside any numbers). With ``--sources`` it also writes ``{train,valid,test}.sources``: the package each
document of the split comes from, one name per line in the order of the documents (the text files
are the same with or without it), so that the corpus can be cut into domains by source
(``scripts/domain_adaptation.py``).

    python scripts/english_corpus.py data/english
    l2fast lm train --config configs/lm-english.json     # reads data/english/{train,valid,test}.txt
"""
from __future__ import annotations

import argparse
import hashlib
import random
import re
import subprocess
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

# package: (pinned version, the pages to read, licence)
PACKAGES = {
    "python3.11-doc": ("3.11.2-6+deb12u8", r"^\./usr/share/doc/python3\.11/html/(?!genindex|py-modindex|search|"
                       r"contents)[\w./-]+\.html$", "Python Software Foundation License"),
    "debian-handbook": ("11.20220922", r"^\./usr/share/doc/debian-handbook/html/en-US/[\w.-]+\.html$",
                        "GPL-2+ or CC BY-SA 3.0"),
    "debian-reference-en": ("2.100", r"^\./usr/share/debian-reference/[\w.-]+\.en\.html$", "GPL-2+"),
}
HELD_OUT = (("test", 300_000), ("valid", 300_000))  # bytes of text each, at least
MIN_WORDS = 8
SEED = 1
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Paragraphs(HTMLParser):
    """The text of an HTML page's paragraphs, in order; text inside <pre>, <script> and <style> is skipped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.stack: list[str] = []
        self.start: int | None = None  # stack depth of the open paragraph
        self.skip = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in VOID:
            if tag == "br" and self.start is not None:
                self.parts.append(" ")
            return
        self.stack.append(tag)
        if tag in ("pre", "script", "style"):
            self.skip += 1
        elif self.start is None and (tag == "p" or (tag == "div" and ("class", "para") in attrs)):
            self.start, self.parts = len(self.stack), []

    def handle_endtag(self, tag):
        if tag not in self.stack:
            return  # a stray end tag
        while self.stack:
            top = self.stack.pop()
            if top in ("pre", "script", "style"):
                self.skip -= 1
            if self.start is not None and len(self.stack) < self.start:
                self.paragraphs.append(" ".join("".join(self.parts).split()))
                self.start = None
            if top == tag:
                break

    def handle_data(self, data):
        if self.start is not None and not self.skip:
            self.parts.append(data)


def page_paragraphs(html: str) -> list[str]:
    parser = Paragraphs()
    parser.feed(html)
    parser.close()
    return [p for p in parser.paragraphs if len(p.split()) >= MIN_WORDS]


def pages(deb: Path, pattern: str) -> list[tuple[str, str]]:
    """(member name, HTML) of the pages of one package, in name order; links are skipped (the handbook's
    English pages are files, its shared images and styles are links)."""
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    with tempfile.TemporaryFile() as f:
        f.write(tar)
        f.seek(0)
        with tarfile.open(fileobj=f) as archive:
            members = sorted((m for m in archive.getmembers() if m.isfile() and re.match(pattern, m.name)),
                             key=lambda m: m.name)
            return [(m.name, archive.extractfile(m).read().decode("utf-8")) for m in members]


def documents(debs: Path) -> list[tuple[str, str]]:
    """(package, document): one document per page with paragraphs left (paragraphs one per line), each
    paragraph kept at its first appearance only (navigation notes and licence boilerplate repeat on
    every page)."""
    seen: set[str] = set()
    docs = []
    for package, (version, pattern, _) in PACKAGES.items():
        deb = next(debs.glob(f"{package}_*.deb"))
        for _, html in pages(deb, pattern):
            kept = [p for p in page_paragraphs(html) if not (p in seen or seen.add(p))]
            if kept:
                docs.append((package, "\n".join(kept)))
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--sources", action="store_true", help="also write SPLIT.sources: the package of each "
                                                               "document of SPLIT.txt, one per line")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", *(f"{name}={version}" for name, (version, _, _) in PACKAGES.items())],
                       cwd=tmp, check=True)
        docs = documents(Path(tmp))
    random.Random(SEED).shuffle(docs)
    splits, start = {}, 0
    for name, size in HELD_OUT:
        end, total = start, 0
        while total < size:
            total += len(docs[end][1].encode("utf-8")) + 2
            end += 1
        splits[name], start = docs[start:end], end
    splits["train"] = docs[start:]
    for name, labelled in splits.items():
        part = [doc for _, doc in labelled]
        if args.sources:
            (args.out / f"{name}.sources").write_text("".join(package + "\n" for package, _ in labelled), encoding="utf-8")
        data = "".join(doc + "\n\n" for doc in part).encode("utf-8")
        (args.out / f"{name}.txt").write_bytes(data)
        print(f"{name}.txt: {len(part):,} documents, {sum(d.count(chr(10)) + 1 for d in part):,} paragraphs, "
              f"{len(data.split()):,} words, {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    sources = "".join(f"- {name} {version}: {licence}\n" for name, (version, _, licence) in PACKAGES.items())
    (args.out / "SOURCES.txt").write_text("Text from the documentation of these Debian packages:\n" + sources,
                                          encoding="utf-8")


if __name__ == "__main__":
    main()
