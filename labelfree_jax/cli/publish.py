"""``labelfree publish``: upload a model package (with a model card) to the Hugging Face Hub.

Prints the zoo index entry (JSON: repo id, pinned commit, tag, sha256 and size of every file)
and, with ``--index-out``, writes it to a file.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``labelfree publish`` (shared with ``scripts/publish_model.py``)."""
    parser.add_argument("package", metavar="RUN_OR_PACKAGE_DIR",
                        help="a model package folder (config.json + model.safetensors) or a training run folder "
                             "holding package/")
    parser.add_argument("--repo", metavar="ORG/NAME",
                        help="Hub repo id to publish to (created if missing; default with --zoo: the zoo "
                             "definition's repo)")
    parser.add_argument("--tag", help="tag to put on the commit (default: v<labelfree-jax version>)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--endpoint", metavar="URL", help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--token", help="Hub access token with write access (default: $HF_TOKEN or the stored login)")
    parser.add_argument("--zoo", metavar="ZOO_DIR",
                        help="zoo definition folder (zoo/<name>): check the package against it and use its repo id, "
                             "licence, tags and MODEL_CARD.md text")
    parser.add_argument("--update-zoo", action="store_true",
                        help="with --zoo: record the commit and file hashes in <ZOO_DIR>/package.json")
    parser.add_argument("--modality", default="bright-field", choices=("bright-field", "DIC", "phase-contrast"),
                        help="input modality recorded in the printed index entry (default: bright-field)")
    parser.add_argument("--license", default="other", help="licence of the weights (card metadata; default: other)")
    parser.add_argument("--license-name", help="licence name when --license other")
    parser.add_argument("--dataset", action="append", default=[], metavar="ID",
                        help="Hub dataset id the model was trained on (card metadata; repeatable)")
    parser.add_argument("--card-text", metavar="FILE.md",
                        help="Markdown appended to the generated model card (training data, limitations ...)")
    parser.add_argument("--staging-dir", metavar="DIR",
                        help="write the exact uploaded folder (config.json, model.safetensors, README.md) here")
    parser.add_argument("--index-out", metavar="FILE.json", help="also write the index entry to this file")
    parser.add_argument("--dry-run", action="store_true",
                        help="only stage the folder and print its files (no upload); needs --staging-dir to keep it")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="upload a model package with a model card to the Hugging Face Hub",
        description=(
            "Validate a model package (strict config, tensor shapes), write a model card README.md (YAML metadata: "
            "library_name labelfree-jax, licence, tags, datasets, metrics), create the Hub repo if needed, upload "
            "config.json + model.safetensors + README.md in one commit, tag it and print the zoo index entry (commit "
            "id, sha256 of every file). Re-publishing the same content makes no new commit."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from labelfree_jax.core.atomic import atomic_write_text
    from labelfree_jax.core.errors import ConfigError, InputError
    from labelfree_jax.hub import publish
    from labelfree_jax.hub.client import file_record

    if args.update_zoo and not args.zoo:
        raise ConfigError("--update-zoo needs --zoo ZOO_DIR")
    if not args.zoo and not args.repo:
        raise ConfigError("give --repo ORG/NAME (or --zoo ZOO_DIR)")
    card_text = None
    if args.card_text:
        try:
            card_text = Path(args.card_text).read_text()
        except OSError as err:
            raise InputError(f"{args.card_text}: cannot read the card text: {err}") from err

    if args.dry_run:
        with tempfile.TemporaryDirectory(prefix="labelfree-publish-") as tmp:
            out = Path(args.staging_dir) if args.staging_dir else Path(tmp)
            if args.zoo:
                from labelfree_jax.hub import zoo

                zoo.stage_zoo_model(args.zoo, args.package, out, repo_id=args.repo)
            else:
                publish.stage_package(args.package, out, repo_id=args.repo, license=args.license,
                                      license_name=args.license_name, datasets=args.dataset, card_text=card_text)
            files = {p.name: file_record(p).model_dump() for p in sorted(out.iterdir()) if p.is_file()}
        print(json.dumps({"dry_run": True, "files": files}, indent=2))
        return 0

    if args.zoo:
        from labelfree_jax.hub import zoo

        result, entry = zoo.publish_zoo_model(
            args.zoo, args.package, repo_id=args.repo, tag=args.tag, private=args.private,
            endpoint=args.endpoint, token=args.token, staging_dir=args.staging_dir,
            update_definition=args.update_zoo,
        )
        name = zoo.load_definition(args.zoo).name
        payload = {"name": name, "entry": entry.model_dump(mode="json"), "result": result.to_dict()}
    else:
        result = publish.publish_package(
            args.package, args.repo, tag=args.tag, private=args.private, endpoint=args.endpoint, token=args.token,
            staging_dir=args.staging_dir, license=args.license, license_name=args.license_name,
            datasets=args.dataset, card_text=card_text,
        )
        from labelfree_jax.hub import zoo
        from labelfree_jax.inference.model import load_package

        config = load_package(publish.resolve_package_dir(args.package)).config
        entry = zoo.entry_from_publish(result, config, modality=args.modality)
        payload = {"name": config.name, "entry": entry.model_dump(mode="json"), "result": result.to_dict()}
    text = json.dumps(payload, indent=2)
    if args.index_out:
        atomic_write_text(args.index_out, text + "\n")
    print(text)
    return 0
