#!/usr/bin/env python3
"""Maintainers: publish a trained zoo model and pin it in the shipped index.

::

    python scripts/publish_model.py dna runs/dna [--tag v1] [--endpoint URL] [--token TOKEN]

1. checks the run's package against ``zoo/dna/package.json`` (transforms,
   pixel size, ndim);
2. publishes config.json + model.safetensors + a model card (``zoo/dna/MODEL_CARD.md`` text)
   to the definition's Hub repo in one commit and tags it (``labelfree publish --zoo``);
3. records the commit, tag, sha256/size of every file and the metrics in ``zoo/dna/package.json``;
4. regenerates ``labelfree_jax/hub/zoo_index/models.json`` from all ``zoo/*/package.json``.

Re-running with the same package is safe: no new commit, same tag, same index. Commit the
changed ``zoo/dna/package.json`` and ``models.json`` afterwards. ``--dry-run`` only checks and
stages (``--staging-dir`` keeps the folder that would be uploaded).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import labelfree_jax
except ImportError:  # running from a source checkout without installing it
    sys.path.insert(0, str(ROOT))

from labelfree_jax.core.errors import LabelfreeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("name", help="zoo model name (a folder of zoo/)")
    parser.add_argument("package", metavar="RUN_OR_PACKAGE_DIR", help="training run folder or model package folder")
    parser.add_argument("--zoo-dir", default=str(ROOT / "zoo"),
                        help="zoo definitions folder (default: zoo/ of this checkout)")
    parser.add_argument("--index", default=str(ROOT / "labelfree_jax" / "hub" / "zoo_index" / "models.json"),
                        help="index file to regenerate (default: the shipped models.json)")
    parser.add_argument("--repo", metavar="ORG/NAME", help="publish to another repo than the definition's")
    parser.add_argument("--tag", help="tag for the commit (default: v<labelfree-jax version>)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--endpoint", metavar="URL", help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--token", help="Hub write token (default: $HF_TOKEN or the stored login)")
    parser.add_argument("--staging-dir", metavar="DIR", help="keep the exact uploaded folder here")
    parser.add_argument("--dry-run", action="store_true", help="check and stage only; no upload, nothing rewritten")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from labelfree_jax.hub import zoo
    from labelfree_jax.hub.client import file_record

    definition_dir = Path(args.zoo_dir) / args.name
    try:
        if args.dry_run:
            with tempfile.TemporaryDirectory(prefix="labelfree-publish-") as tmp:
                out = zoo.stage_zoo_model(definition_dir, args.package,
                                          Path(args.staging_dir) if args.staging_dir else Path(tmp), repo_id=args.repo)
                files = {p.name: file_record(p).model_dump() for p in sorted(out.iterdir()) if p.is_file()}
            print(json.dumps({"name": args.name, "dry_run": True, "files": files}, indent=2))
            return 0
        result, entry = zoo.publish_zoo_model(
            definition_dir, args.package, repo_id=args.repo, tag=args.tag, private=args.private,
            endpoint=args.endpoint, token=args.token, staging_dir=args.staging_dir,
            update_definition=True, index_file=args.index,
        )
    except LabelfreeError as err:
        print(f"publish_model: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"name": args.name, "entry": entry.model_dump(mode="json"), "result": result.to_dict()},
                     indent=2))
    print(f"updated {definition_dir / 'package.json'} and {args.index}; commit them.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
