"""`tbps serve`: a page on localhost to search a gallery by description, with a JSON API.

``serve`` opens (builds or brings up to date) the gallery's index with the checkpoint, as
`tbps search` does, then serves ``tbps.serve.app`` with uvicorn. A checkpoint or folder
that cannot be used fails here, before anything listens, with `tbps search`'s errors.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from ..errors import ConfigError


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another "
                              "--port, or stop the program using it") from exc


def prepare(ckpt: str | Path | None, gallery: str | Path | None, index_dir=None,
            device: str = "auto", kind: str = "auto", batch_size: int = 64, workers: int = 2):
    """The ``GallerySearch`` of ``ckpt`` over ``gallery`` (the defaults: the newest
    synthetic run over its test images), its index brought up to date."""
    from ..search import format_update, open_index
    from .app import GallerySearch
    from .defaults import newest_synthetic_checkpoint, test_gallery

    if ckpt is None:
        if gallery is not None:
            raise ConfigError("--gallery without --ckpt: pass the checkpoint that should "
                              "search it (--ckpt runs/<exp>/<time>/checkpoints/best.ckpt)")
        ckpt = newest_synthetic_checkpoint()
        print(f"no --ckpt: serving the newest synthetic run, {ckpt}", file=sys.stderr)
    if gallery is None:
        gallery = test_gallery(Path(ckpt))
        print(f"no --gallery: serving its test images, {gallery}", file=sys.stderr)
    index, model = open_index(ckpt, gallery, index_dir, device)
    report = index.update(model, batch_size, workers)
    print(format_update(report.summary()), file=sys.stderr)
    return GallerySearch(index, model, kind)


def serve(ckpt=None, gallery=None, host: str = "127.0.0.1", port: int = 7860, index_dir=None,
          device: str = "auto", kind: str = "auto", batch_size: int = 64,
          workers: int = 2) -> None:
    import uvicorn

    from .app import create_app

    _check_port(host, port)
    service = prepare(ckpt, gallery, index_dir, device, kind, batch_size, workers)
    where = ("only this machine can open it; --host 0.0.0.0 shares it with your network"
             if host in ("127.0.0.1", "localhost", "::1") else
             f"bound to {host}: other machines can open it")
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {len(service.index)} images of {service.root} at http://{shown}:{port}/ "
          f"({where}); Ctrl-C stops", flush=True)
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
