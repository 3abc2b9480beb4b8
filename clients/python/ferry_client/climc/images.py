"""image-create, image-list, image-show, image-delete."""

from __future__ import annotations

import argparse

from ..imagefmt import sniff_format
from .context import Context
from .output import total_footer
from .parser import Registry, non_negative_int
from .views import IMAGE_COLUMNS, image_fields, image_row


def _show(ctx: Context, image) -> None:  # type: ignore[no-untyped-def]
    if ctx.out.json:
        ctx.out.emit_json(image)
    else:
        ctx.out.kv(image_fields(image))


def cmd_create(ctx: Context, a: argparse.Namespace) -> int:
    fmt = a.format or sniff_format(a.file)
    ctx.out.note(f"Uploading {a.file} as {fmt} image {a.name}")
    image = ctx.client.images.create(a.name, a.file, format=fmt, min_memory_mb=a.min_mem or 0,
                                     timeout=ctx.wait_timeout)
    _show(ctx, image)
    return 0


def cmd_list(ctx: Context, a: argparse.Namespace) -> int:
    images = ctx.client.images.list(search=a.search or "")
    if ctx.out.json:
        ctx.out.emit_json({"images": images})
    else:
        ctx.out.table(IMAGE_COLUMNS, [image_row(i) for i in images], total_footer(len(images)))
    return 0


def cmd_show(ctx: Context, a: argparse.Namespace) -> int:
    _show(ctx, ctx.client.images.get(a.id))
    return 0


def cmd_delete(ctx: Context, a: argparse.Namespace) -> int:
    _show(ctx, ctx.client.images.delete(a.id))
    return 0


def register(reg: Registry) -> None:
    p = reg.command("image-create", "Upload a disk image", cmd_create)
    p.add_argument("--file", required=True, help="Path of the qcow2 or raw image file to upload")
    p.add_argument("--format", choices=("qcow2", "raw"),
                   help="Format of the file (default: qcow2 if it has the qcow2 magic, else raw)")
    p.add_argument("--min-mem", type=non_negative_int, help="Minimum memory in MB to boot the image")
    p.add_argument("name", metavar="NAME", help="Name of the new image")

    p = reg.command("image-list", "List images", cmd_list)
    p.add_argument("--search", help="Filter by name substring or exact ID")

    p = reg.command("image-show", "Show details of an image", cmd_show)
    p.add_argument("id", metavar="ID", help="ID or name of image")

    p = reg.command("image-delete", "Delete an image no server uses", cmd_delete)
    p.add_argument("id", metavar="ID", help="ID or name of image")
