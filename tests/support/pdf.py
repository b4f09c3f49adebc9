"""Looking inside PDFs in tests: WeasyPrint compresses objects into streams."""

from __future__ import annotations

import re
import zlib

# A stream's dictionary gives its exact byte length; slicing by it (not searching for the word
# "endstream", which compressed bytes can contain) reads every stream whole.
STREAM = re.compile(rb"/Length (\d+)(?:(?!>>).)*>>\s*stream\r?\n", re.S)


def pdf_text(pdf: bytes) -> bytes:
    """The PDF with every Flate stream decompressed and appended, for substring checks."""
    parts = [pdf]
    for match in STREAM.finditer(pdf):
        start = match.end()
        data = pdf[start : start + int(match.group(1))]
        try:
            parts.append(zlib.decompress(data))
        except zlib.error:
            continue
    return b"\n".join(parts)


def is_tagged_pdf_ua(pdf: bytes) -> bool:
    """Tagged (a structure tree), marked, and declaring PDF/UA in its XMP metadata."""
    text = pdf_text(pdf)
    return b"/StructTreeRoot" in text and b"/Marked true" in text and b"pdfuaid:part" in text
