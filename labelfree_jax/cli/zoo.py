"""``labelfree zoo``: list the model zoo and sample data, pre-download models and samples.

* ``labelfree zoo list [--json]``            name, modality, status, revision of every model
* ``labelfree zoo download NAME``            fetch a zoo model (or ``org/name@revision``) into the
  Hugging Face cache, verified, and print its folder (afterwards it loads with ``HF_HUB_OFFLINE=1``)
* ``labelfree zoo samples [--json]``         the sample images
* ``labelfree zoo fetch-sample NAME``        fetch one sample image and print its path
"""

from __future__ import annotations

import argparse
import dataclasses
import json


def _hub_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", metavar="URL", help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--cache-dir", metavar="DIR", help="Hugging Face cache folder (default: $HF_HUB_CACHE)")
    parser.add_argument("--token", help="Hub access token (private repos)")
    parser.add_argument("--force", action="store_true", help="download again even when cached")
    parser.add_argument("--index", metavar="FILE.json", help="use this index instead of the shipped one")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "zoo",
        help="list / download the pretrained models and sample images",
        description="The model zoo: named models pinned to a Hub commit and verified by sha256, plus sample images.",
    )
    sub = parser.add_subparsers(dest="zoo_command", metavar="ACTION")
    p = sub.add_parser("list", help="list the zoo models")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("--index", metavar="FILE.json", help="use this index instead of the shipped one")
    p = sub.add_parser("download", help="fetch a model into the Hugging Face cache and print its folder")
    p.add_argument("name", help="zoo model name or org/name@revision")
    _hub_options(p)
    p = sub.add_parser("samples", help="list the sample images")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("--index", metavar="FILE.json", help="use this sample index instead of the shipped one")
    p = sub.add_parser("fetch-sample", help="fetch a sample image and print its path")
    p.add_argument("name", help="sample name")
    _hub_options(p)
    parser.set_defaults(func=run, _parser=parser)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    from labelfree_jax.hub import samples as datasets, zoo

    action = getattr(args, "zoo_command", None)
    if action == "list":
        models = zoo.list(args.index)
        if args.json:
            print(json.dumps([dataclasses.asdict(m) for m in models], indent=2))
        else:
            rows = [[m.name, m.modality, m.status, m.revision or "-", m.repo_id, m.structure] for m in models]
            print(_table(rows, ["name", "modality", "status", "revision", "repo", "structure"]))
        return 0
    if action == "samples":
        samples = datasets.list(args.index)
        if args.json:
            print(json.dumps([dataclasses.asdict(s) for s in samples], indent=2))
        else:
            rows = [[s.name, s.status, s.revision or "-", f"{s.repo_id}:{s.filename}"] for s in samples]
            print(_table(rows, ["name", "status", "revision", "file"]))
        return 0
    if action == "download":
        folder = zoo.download(args.name, index=args.index, endpoint=args.endpoint, cache_dir=args.cache_dir,
                              token=args.token, force_download=args.force)
        print(folder)
        return 0
    if action == "fetch-sample":
        path = datasets.fetch(args.name, index=args.index, endpoint=args.endpoint, cache_dir=args.cache_dir,
                              token=args.token, force_download=args.force)
        print(path)
        return 0
    args._parser.print_help()
    return 2
