"""No secret is written down: URLs with credentials reach the committed lock file stripped, and
errors about a malformed ~/.netrc name the file and line, never a token."""

from __future__ import annotations

import pytest

from specfm.fetch import ChecksumLock, download
from specfm.fetch.http import redact_url
from specfm.stars.archive import gaia as G

SECRETS = ("hunter2", "s3cretTok", "AKIAXYZ")


@pytest.mark.parametrize("url,expected", [
    ("https://alice:hunter2@example.org/data/x.fits", "https://example.org/data/x.fits"),
    ("https://example.org/x.fits?token=s3cretTok&version=2", "https://example.org/x.fits?version=2"),
    ("https://example.org/x?X-Amz-Signature=AKIAXYZ&X-Amz-Credential=AKIAXYZ", "https://example.org/x"),
    ("http://u@example.org:8080/a?api_key=AKIAXYZ#frag", "http://example.org:8080/a"),
    ("file:///data/x.fits", "file:///data/x.fits"),
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_lock_never_stores_credentials(tmp_path):
    lock = ChecksumLock(tmp_path / "checksums.lock.yaml")
    lock.record("a/x", sha256="0" * 64, size=1, url="https://alice:hunter2@example.org/x?token=s3cretTok")
    text = lock.path.read_text()
    assert "example.org/x" in text and not any(s in text for s in SECRETS)


def test_download_records_stripped_url_and_errors_hide_it(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    lock = ChecksumLock(tmp_path / "lock.yaml")
    # a dead http mirror with credentials first, then the file:// mirror that works
    dead = "http://alice:hunter2@127.0.0.1:9/x.bin?token=s3cretTok"
    download([dead, src.as_uri()], tmp_path / "out.bin", lock=lock, lock_key="k/x.bin", retries=0,
             progress=False)
    assert not any(s in lock.path.read_text() for s in SECRETS)
    with pytest.raises(Exception) as info:
        download([dead], tmp_path / "other.bin", lock=lock, lock_key="k/y.bin", retries=0, progress=False)
    assert "127.0.0.1:9/x.bin" in str(info.value) and not any(s in str(info.value) for s in SECRETS)


@pytest.mark.parametrize("text", [
    "machine gea.esac.esa.int login bob password s3cretTok extra\n",
    "machine gea.esac.esa.int login bob passwrd s3cretTok\n",
    "s3cretTok machine gea.esac.esa.int\n",
])
def test_malformed_netrc_error_names_file_and_line_not_token(tmp_path, text):
    rc = tmp_path / "netrc"
    rc.write_text(text)
    with pytest.raises(ValueError) as info:
        G.credentials("https://gea.esac.esa.int/tap-server", environ={}, netrc_path=str(rc))
    msg = str(info.value)
    assert str(rc) in msg and "line" in msg
    assert "s3cretTok" not in msg and "extra" not in msg and "passwrd" not in msg
