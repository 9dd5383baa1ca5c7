"""Render an HTML page in headless Chromium and report what a reader would see: every image's
load state and the page's section ids. Used by the report test; runnable by hand:
    python tests/browser/check_page.py results/report.html
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HOW_TO_INSTALL = "headless Chromium not found: run `bash tests/browser/install_chromium.sh` (Debian package chromium)"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000", "--dump-dom"]
# Runs in the page after every image has loaded or failed (the load event), and writes its
# findings into the DOM, which --dump-dom prints.
PROBE = """<script>window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images).map(function (i) {
    return {path: i.dataset.path || i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight};
  });
  var sections = Array.prototype.slice.call(document.querySelectorAll("section")).map(function (s) { return s.id; });
  var out = document.createElement("pre"); out.id = "specfm-probe";
  out.textContent = JSON.stringify({images: imgs, sections: sections, title: document.title});
  document.body.appendChild(out);
});</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise RuntimeError(HOW_TO_INSTALL)


def check_page(page: str | Path, timeout: float = 120) -> dict:
    """{"images": [{path, complete, width, height}], "sections": [ids], "title"} as Chromium saw them."""
    html = Path(page).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "page.html"
        probe.write_text(html.replace("</body>", PROBE + "</body>", 1))
        cmd = [chromium(), *FLAGS, f"--user-data-dir={tmp}/profile", probe.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    match = re.search(r'<pre id="specfm-probe">(.*?)</pre>', proc.stdout, re.S)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"chromium could not render {page} (exit {proc.returncode}): {proc.stderr[-2000:]}")
    text = match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return json.loads(text)


if __name__ == "__main__":
    result = check_page(sys.argv[1])
    broken = [i["path"] for i in result["images"] if not (i["complete"] and i["width"] > 0)]
    print(json.dumps({"sections": result["sections"], "images": len(result["images"]), "broken": broken}, indent=1))
    sys.exit(1 if broken else 0)
