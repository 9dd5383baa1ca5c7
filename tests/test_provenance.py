"""Provenance records capture products and inputs; `specfm verify` catches any change."""

import json

from specfm import provenance
from specfm.cli import main


def make_product(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text("raw data\n")
    product = tmp_path / "product.txt"
    product.write_text("made from raw data\n")
    rec = provenance.write(product, inputs={"raw": src}, params={"k": 3}, code=["specfm.io"], seed=7,
                           step="unit-test")
    return src, product, rec


def test_record_contents_and_determinism(tmp_path):
    src, product, rec = make_product(tmp_path)
    data = json.loads(rec.read_text())
    assert data["product"]["sha256"] == provenance.sha256_file(product)
    assert data["inputs"]["raw"]["sha256"] == provenance.sha256_file(src)
    assert data["params"] == {"k": 3} and data["seed"] == 7
    assert "numpy" in data["packages"] and len(data["code_digest"]) == 64
    first = rec.read_bytes()
    provenance.write(product, inputs={"raw": src}, params={"k": 3}, code=["specfm.io"], seed=7, step="unit-test")
    assert rec.read_bytes() == first  # no timestamps: a rerun gives the same record


def test_code_digest_changes_with_code(tmp_path):
    extra = tmp_path / "script.py"
    extra.write_text("print(1)\n")
    before = provenance.code_digest(["specfm.io"], [extra])
    extra.write_text("print(2)\n")
    assert provenance.code_digest(["specfm.io"], [extra]) != before


def test_verify_catches_modified_product_and_input(tmp_path, capsys):
    src, product, _ = make_product(tmp_path)
    assert main(["verify", str(tmp_path), "--base", "/"]) == 0
    product.write_text("tampered\n")
    assert main(["verify", str(tmp_path), "--base", "/"]) == 1
    out = capsys.readouterr().out
    assert "product.txt" in out and "modified" in out
    product.write_text("made from raw data\n")
    src.write_text("new raw data\n")
    assert main(["verify", str(tmp_path), "--base", "/"]) == 1
    assert "input 'raw' changed" in capsys.readouterr().out
    src.unlink()
    assert main(["verify", str(tmp_path), "--base", "/"]) == 1
    assert "missing" in capsys.readouterr().out
