"""PDF rendering with WeasyPrint: tagged PDF/UA-1, and a fetcher that only serves our own static files.

Templates are ours, but they contain patient-provided text; a fetcher that refuses every URL
outside ``static/`` means nothing in a document can make the renderer reach the network or
read other files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from weasyprint import HTML
from weasyprint.urls import URLFetcher, URLFetcherResponse

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "static"
TEMPLATES = ROOT / "templates"
STATIC_SCHEME = "portal-static:"


class StaticOnlyFetcher(URLFetcher):  # type: ignore[misc]
    """Serves ``portal-static:NAME`` from static/ and refuses everything else."""

    def fetch(self, url: str, headers: Any = None) -> URLFetcherResponse:
        if not url.startswith(STATIC_SCHEME):
            raise ValueError(f"refused to fetch {url!r}: PDFs may only use the portal's own static files")
        path = (STATIC / url.removeprefix(STATIC_SCHEME)).resolve()
        if not path.is_relative_to(STATIC) or not path.is_file():
            raise ValueError(f"no static file {url!r}")
        return URLFetcherResponse(url, body=path.read_bytes(), headers={"Content-Type": _mime(path)})


def _mime(path: Path) -> str:
    return {".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}.get(
        path.suffix, "application/octet-stream"
    )


class PdfRenderer:
    def __init__(self) -> None:
        self._env = Environment(loader=FileSystemLoader(TEMPLATES / "pdf"), autoescape=select_autoescape(default=True))

    def render(self, template: str, **context: Any) -> bytes:
        html = self._env.get_template(template).render(**context)
        return self.html_to_pdf(html)

    @staticmethod
    def html_to_pdf(html: str) -> bytes:
        document = HTML(string=html, base_url=STATIC_SCHEME, url_fetcher=StaticOnlyFetcher())
        pdf: bytes = document.write_pdf(pdf_variant="pdf/ua-1", uncompressed_pdf=False)
        return pdf
