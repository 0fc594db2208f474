"""OME-XML: the few parts labelfree-jax reads (images, pixels, channels, descriptions, map annotations).

Parsed with :mod:`xml.etree.ElementTree`, every value kept as the text the file has (tifffile's
``xml2dict`` turns ``"1e3"`` into a float and ``"a, b"`` into a tuple, which would change channel
names and JSON descriptions).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

__all__ = ["OmeImage", "parse_ome"]


@dataclass(frozen=True)
class OmeImage:
    """One ``<Image>`` of an OME-XML document.

    Attributes:
        name: the ``Name`` attribute (None when absent).
        description: the text of ``<Description>`` (None when absent).
        pixels: the attributes of ``<Pixels>`` (SizeX, PhysicalSizeX, Type, ...), as text.
        channel_names: one per ``<Channel>``; None when any channel lacks a Name.
        map_annotations: key/value pairs of each referenced ``<MapAnnotation>``, by namespace
            (``""`` when it has none).
    """

    name: str | None
    description: str | None
    pixels: dict[str, str]
    channel_names: list[str] | None
    map_annotations: dict[str, dict[str, str]] = field(default_factory=dict)

    def size(self, axis: str) -> int:
        """``Size<axis>`` (1 when absent)."""
        return int(self.pixels.get(f"Size{axis}", "1"))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if _local(c.tag) == name]


def _map_annotations(root: ET.Element) -> dict[str, tuple[str, dict[str, str]]]:
    """Every MapAnnotation by ID: (namespace, {key: value})."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for sa in _children(root, "StructuredAnnotations"):
        for ann in _children(sa, "MapAnnotation"):
            values: dict[str, str] = {}
            for value in _children(ann, "Value"):
                for m in _children(value, "M"):
                    values[m.get("K", "")] = m.text or ""
            out[ann.get("ID", "")] = (ann.get("Namespace", ""), values)
    return out


def _image(elem: ET.Element, annotations: dict[str, tuple[str, dict[str, str]]]) -> OmeImage:
    pixels_elems = _children(elem, "Pixels")
    pixels = pixels_elems[0] if pixels_elems else ET.Element("Pixels")
    channels = _children(pixels, "Channel")
    names = [c.get("Name") for c in channels]
    descriptions = _children(elem, "Description")
    maps: dict[str, dict[str, str]] = {}
    for ref in _children(elem, "AnnotationRef"):
        found = annotations.get(ref.get("ID", ""))
        if found is not None:
            maps.setdefault(found[0], {}).update(found[1])
    return OmeImage(
        name=elem.get("Name"),
        description=(descriptions[0].text or "") if descriptions else None,
        pixels=dict(pixels.attrib),
        channel_names=[str(n) for n in names] if names and all(n is not None for n in names) else None,
        map_annotations=maps,
    )


def parse_ome(xml: str) -> list[OmeImage]:
    """The ``<Image>`` elements of an OME-XML document, in order.

    Raises:
        ValueError: the text is not XML (``xml.etree.ElementTree.ParseError``) or has no OME root.
    """
    root = ET.fromstring(xml)
    if _local(root.tag) != "OME":
        raise ValueError(f"the root element is <{_local(root.tag)}>, not <OME>")
    annotations = _map_annotations(root)
    return [_image(e, annotations) for e in _children(root, "Image")]
