"""Security headers on every response: no sniffing, no framing, a strict CSP, HSTS when served over TLS.

The two HTML pages (the upload page and /docs) carry their script inline; the CSP admits exactly those
scripts by their SHA-256 (read from the files at start), so no other script can run in the pages.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re

from flask import Flask, request

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
HSTS = "max-age=31536000"        # one year; sent only on https (the ALB's X-Forwarded-Proto through ProxyFix)
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"   # JSON answers: nothing to load


def inline_script_hashes(folder: str = STATIC) -> list[str]:
    """CSP sources for every inline <script> of the pages: 'sha256-<base64>'."""
    out = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".html"):
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                for body in re.findall(r"<script>(.*?)</script>", fh.read(), flags=re.S):
                    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
                    out.append(f"'sha256-{digest}'")
    return out


def page_csp(script_hashes: list[str]) -> str:
    """The CSP of the HTML pages: own origin only, the pages' own scripts, image previews from blobs."""
    return ("default-src 'self'; script-src 'self' " + " ".join(script_hashes) + "; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def install_security_headers(app: Flask) -> None:
    """Add the headers in an after_request hook (error answers included)."""
    html_csp = page_csp(inline_script_hashes())

    @app.after_request
    def _security_headers(resp):
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"              # frame-ancestors for browsers without CSP 2
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Content-Security-Policy"] = html_csp if resp.mimetype == "text/html" else API_CSP
        if request.scheme == "https":
            resp.headers["Strict-Transport-Security"] = HSTS
        return resp
