"""The web page and its static files; any other name is a 404."""

from __future__ import annotations


def test_page_and_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    missing = client.get("/static/secrets.txt")
    assert missing.status_code == 404 and missing.json() == {"detail": "no static file 'secrets.txt'"}
