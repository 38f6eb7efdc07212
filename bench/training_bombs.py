"""Peak memory of the service while it refuses decompression bombs sent to ``POST /api/trainings``.

Not a test: prints a markdown table for docs/benchmarks.md. Issue 17 item 6: a 13000x13000 1-bit PNG (20 KB)
took the server from 463 MB to 2.2 GB before its 202, and a 0.5 MB zip with one 400 MB member peaked +735 MB
before its 422 (and concurrent requests add up). For each implementation (``--baseline REV``, exported from
git, and this tree; one after the other, same machine) it starts ``flux-service serve`` on the demo model,
then sends each attack and samples the server's resident memory every 20 ms: the peak growth over the RSS
before the attack, and the answer. Run from the repository root:

    .venv/bin/python bench/training_bombs.py --baseline 4b81dda
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.probes.trainings import RssGrowth, png_bomb, red_photos, zip_bomb  # noqa: E402
from bench.training_events import export, serve  # noqa: E402


def attacks() -> list[tuple[str, list[list[tuple[str, bytes]]]]]:
    """(label, the uploads sent at once: each a list of files)."""
    png, zipped, big = png_bomb(13000, 13000), zip_bomb(400), largest_photo()
    return [(f"13000x13000 1-bit PNG ({len(png) // 1024} KB) + 4 photos", [red_photos() + [("bomb.png", png)]]),
            (f"zip ({len(zipped) // 1024} KB) with a 400 MB member", [[("set.zip", zipped)]]),
            ("the same zip, 4 requests at once", [[("set.zip", zipped)]] * 4),
            (f"a 7000x7000 JPEG ({len(big) // 1024**2} MB, 49 MP: allowed) + 4 photos, 4 requests at once",
             [red_photos() + [("big.jpg", big)]] * 4)]


def largest_photo() -> bytes:
    """A 7000x7000 JPEG (49 megapixels, under the 50 MP default): what a legitimate upload may cost."""
    y, x = np.mgrid[0:7000, 0:7000]
    a = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def run(root: Path, cases) -> list[tuple[float, float, str]]:
    out = []
    with serve(root) as (proc, url):
        for _label, uploads in cases:
            time.sleep(2)  # let the allocator settle after the previous case
            answers: list[str] = []

            def send(i, files, answers=answers) -> None:  # one name each (one name: 409 before the zip is read)
                with httpx.Client(base_url=url, timeout=300) as c:
                    r = c.post("/api/trainings", files=[("photos", f) for f in files],
                               data={"name": f"bomb{i}", "trigger": "ohwx", "steps": "1"})
                    answers.append(str(r.status_code))
                    if r.status_code == 202:
                        c.delete(f"/api/trainings/{r.json()['id']}")

            with RssGrowth(proc.pid) as rss:
                threads = [threading.Thread(target=send, args=(i, f)) for i, f in enumerate(uploads)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            out.append((rss.start, rss.growth, ",".join(sorted(answers))))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="git revision to compare with (exported to a temporary folder)")
    args = ap.parse_args()
    cases = attacks()
    sides = ([(f"`{args.baseline}`", export(args.baseline))] if args.baseline else []) + [("this tree", ROOT)]
    print("| attack | implementation | server RSS before (MiB) | peak growth (MiB) | answers |")
    print("|---|---|---|---|---|")
    for label, root in sides:
        for (case, _), (start, growth, answers) in zip(cases, run(root, cases)):
            print(f"| {case} | {label} | {start:.0f} | +{growth:.0f} | {answers} |", flush=True)
        if root != ROOT:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
