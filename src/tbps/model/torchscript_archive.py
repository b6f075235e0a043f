"""The state dict of a TorchScript archive (OpenAI's CLIP ``ViT-B-16.pt``) without
``torch.jit.load``, which torch 2.14 deprecates and which would also run the archive's code.

An archive is a zip: ``<name>/data.pkl`` pickles the module tree (each scripted module an
object of a ``__torch__.*`` class whose state is a dict of its attributes, tensors rebuilt
from ``<name>/data/<key>`` storages), and ``<name>/code/__torch__/**.py`` declares each
class's ``__parameters__`` and ``__buffers__``. The state dict is the parameters and
buffers of every module, dotted by attribute names, as ``ScriptModule.state_dict()`` has
them; plain tensor attributes are not in it. Only tensors, storages and ordered dicts are
unpickled; any other class in the pickle is refused.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

_CLASS = re.compile(r"^class (\w+)\(Module\):\n((?:[ \t]+.*\n|\n)*)", re.M)
_LIST = r"{key} = \[(.*?)\]"


class _Scripted:
    """A scripted module's pickled attributes."""

    qualname = ""

    def __setstate__(self, state: dict) -> None:
        self.attributes = state


def _declared(archive: zipfile.ZipFile, root: str) -> dict[str, set[str]]:
    """{qualified class name: names of its parameters and buffers} from the code files."""
    out: dict[str, set[str]] = {}
    for name in archive.namelist():
        if not (name.startswith(f"{root}/code/") and name.endswith(".py")):
            continue
        module = name[len(f"{root}/code/"):-3].replace("/", ".")
        for match in _CLASS.finditer(archive.read(name).decode("utf-8")):
            kept: set[str] = set()
            for key in ("__parameters__", "__buffers__"):
                found = re.search(_LIST.format(key=key), match.group(2))
                if found:
                    kept |= set(re.findall(r'"([^"]+)"', found.group(1)))
            out[f"{module}.{match.group(1)}"] = kept
    return out


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(path) as archive:
        pickled = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickled) != 1:
            raise ValueError(f"{path}: a TorchScript archive holds one data.pkl, found "
                             f"{len(pickled)}")
        root = pickled[0][:-len("/data.pkl")]
        declared = _declared(archive, root)
        classes: dict[str, type] = {}

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str):
                if module == "__torch__" or module.startswith("__torch__."):
                    qualname = f"{module}.{name}"
                    if qualname not in classes:
                        classes[qualname] = type(name, (_Scripted,), {"qualname": qualname})
                    return classes[qualname]
                if module == "torch._utils" and name in ("_rebuild_tensor_v2",
                                                         "_rebuild_parameter"):
                    return getattr(torch._utils, name)
                if module == "torch" and name.endswith("Storage"):
                    # the dtype by name, as torch.load reads it (the legacy classes warn)
                    return torch.serialization.StorageType(name)
                if module == "collections" and name == "OrderedDict":
                    return OrderedDict
                raise pickle.UnpicklingError(f"{path}: refused to unpickle {module}.{name}")

            def persistent_load(self, pid):
                _, storage_type, key, _, numel = pid
                dtype = storage_type.dtype
                raw = bytearray(archive.read(f"{root}/data/{key}"))
                untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8)
                return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype,
                                                  _internal=True)

        top = Unpickler(archive.open(pickled[0])).load()
    out: dict[str, torch.Tensor] = {}

    def walk(obj: _Scripted, prefix: str) -> None:
        kept = declared.get(obj.qualname, set())
        for name, value in obj.attributes.items():
            if isinstance(value, _Scripted):
                walk(value, f"{prefix}{name}.")
            elif isinstance(value, torch.Tensor) and name in kept:
                out[f"{prefix}{name}"] = value.detach()

    if not isinstance(top, _Scripted):
        raise ValueError(f"{path}: data.pkl does not hold a scripted module")
    walk(top, "")
    return out
