"""``labelfree export``: hand a model package to other tools.

* ``labelfree export bioimageio PACKAGE OUT``  a bioimage.io model (spec 0.5, ONNX weights):
  ``OUT`` ending in ``.zip`` is written as a zip file, anything else as a folder with ``rdf.yaml``.
  ``--test`` then runs ``bioimageio.core``'s ``test_model`` on the result.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model package for other tools (bioimage.io)",
        description="Export a model package for other tools.",
    )
    sub = parser.add_subparsers(dest="export_command", metavar="FORMAT")
    p = sub.add_parser(
        "bioimageio",
        help="write a bioimage.io model (spec 0.5) with ONNX weights",
        description=(
            "Write a model package as a bioimage.io model (spec format 0.5): ONNX weights of the fnet U-Net, "
            "the preprocessing bioimage.io can express (zero_mean_unit_variance, clip), test input and output "
            "predicted by labelfree-jax, a cover image, documentation with the package's model card and a "
            "Limitations section (what bioimage.io cannot express, e.g. the resampling to the working pixel size). "
            "OUT ending in .zip is a zip file, otherwise a folder. Needs: pip install 'labelfree-jax[export]'."
        ),
    )
    p.add_argument("package", help="model package folder (config.json, model.safetensors, README.md)")
    p.add_argument("out", help="output: NAME.zip (zip file) or a folder")
    p.add_argument("--author", action="append", default=[], metavar="NAME",
                   help="author name (repeat for several; at least one)")
    p.add_argument("--license", metavar="SPDX",
                   help="licence of the weights as an SPDX id, e.g. CC-BY-4.0 (default: the model card's, unless "
                        "it is 'other')")
    p.add_argument("--halo", metavar="N[,N...]",
                   help="output halo in voxels: one number, or one per spatial axis (z,)y,x; 0: none "
                        "(default: the receptive radius, at most 32 in Y/X and 8 in Z)")
    p.add_argument("--test-image", metavar="FILE",
                   help="image (TIFF / OME-TIFF / CZI / OME-Zarr) for the test input and cover: its signal channel, "
                        "resampled to the working pixel size, centre-cropped (default: a synthetic smooth image)")
    p.add_argument("--channel", help="channel(s) of --test-image: index or name, comma-separated")
    p.add_argument("--axes", help="axes of the stored array of --test-image, e.g. ZYX (default: from its metadata)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic test input (default 0)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--test", action="store_true",
                   help="run bioimageio.core's test_model on the result and fail unless it passes")
    parser.set_defaults(func=run, _parser=parser)


def _halo(value: str | None):
    from labelfree_jax.core.errors import ConfigError

    if value is None:
        return None
    try:
        parts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--halo {value!r}: give whole numbers of voxels, e.g. 32 or 8,32,32") from None
    return parts[0] if len(parts) == 1 else tuple(parts)


def _channels(value: str | None):
    """``"0"`` -> 0, ``"0,2"`` -> [0, 2], ``"Bright"`` -> "Bright", None -> None."""
    if value is None:
        return None
    parts = [v.strip() for v in value.split(",") if v.strip()]
    picked = [int(v) if v.lstrip("-").isdigit() else v for v in parts]
    return picked[0] if len(picked) == 1 else picked


def _test(path) -> int:
    try:
        from bioimageio.core import test_model
    except ImportError:
        print("--test needs bioimageio.core: pip install 'labelfree-jax[export]'")
        return 1
    summary = test_model(str(path))
    print(f"bioimageio.core test_model: {summary.status}")
    if summary.status != "passed":
        for detail in summary.details:
            if detail.status != "passed":
                for error in detail.errors:
                    print(f"  {detail.name}: {error.msg}")
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "export_command", None) != "bioimageio":
        args._parser.print_help()
        return 2
    from labelfree_jax.export import export_bioimageio

    result = export_bioimageio(args.package, args.out, authors=args.author, license=args.license,
                               halo=_halo(args.halo), test_image=args.test_image,
                               test_image_channels=_channels(args.channel), test_image_axes=args.axes,
                               seed=args.seed, force=args.force)
    kind = "zip file" if result.path.suffix.lower() == ".zip" else "folder"
    print(f"wrote bioimage.io model ({kind}) {result.path}")
    print(f"test input {result.test_input_shape}; ONNX vs JAX max relative difference {result.max_relative_difference:.2g}")
    for text in result.warnings:
        print(f"note: {text}")
    print(f"{len(result.limitations)} limitation(s) stated in its README.md")
    return _test(result.path) if args.test else 0
