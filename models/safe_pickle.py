"""Read a `torch.save` zip file that holds pickled classes, without importing or calling anything it names.

ultralytics/yolov5 checkpoints pickle whole nn.Module trees; `torch.load(weights_only=False)` would import
and run whatever the file names. Here every class reference becomes an inert record (`PickledObject`: the
dotted name, the constructor arguments and the state the file gave, nothing more). The only things honoured
are rebuilding tensors from the zip's storages (our own code, bounds-checked), `collections.OrderedDict`, sets
and the pickle format's plain containers. A reference outside the modules a YOLOv5 checkpoint may name
(`os.system`, `builtins.eval`, an unknown package) refuses the whole file before anything is built from it.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from utils.checkpoints import CheckpointError

# dotted prefixes whose classes a YOLOv5 checkpoint pickles (kept as inert records, never imported)
INERT_PREFIXES = ("models.", "yolov5.", "ultralytics.", "torch.nn.modules.", "numpy.", "pathlib.", "argparse.")
INERT_NAMES = {"torch.Size", "torch.device", "torch.dtype", "torch.nn.parameter.Parameter",
               "torch._tensor.Tensor", "torch.Tensor", *(f"torch.{d}" for d in ("float16", "float32", "float64",
                                                                                   "bfloat16", "int64", "int32",
                                                                                   "uint8", "bool"))}
STORAGE_DTYPES = {"HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
                  "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                  "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                  "BoolStorage": torch.bool}


class PickledObject:
    """An instance of a class the file names, kept as data: `ref` (dotted class name), `args`, `state`.

    Building one runs nothing of the named class; item and list assignments the pickle makes are recorded.
    """

    ref = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "PickledObject":
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items = args, None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<pickled {self.ref}>"


class _Storage:
    """A storage the pickle refers to: a flat tensor of the zip entry's bytes in the named dtype."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


def _check_ints(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in values):
        raise pickle.UnpicklingError(f"tensor {what} {values!r} is not a tuple of non-negative ints")
    return tuple(values)


def rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    """What torch._utils._rebuild_tensor_v2 does, checked: the view must lie inside its storage."""
    if not isinstance(storage, _Storage) or not isinstance(offset, int) or offset < 0:
        raise pickle.UnpicklingError("a tensor that does not refer to a storage of the file")
    size, stride = _check_ints(size, "size"), _check_ints(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length")
    extent = 0 if 0 in size else offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if extent > storage.flat.numel():
        raise pickle.UnpicklingError(f"a tensor of size {size} reaches past its storage of {storage.flat.numel()}")
    return storage.flat.as_strided(size, stride, offset)


def rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    """An nn.Parameter is read as its tensor: only the values are taken."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter without a tensor")
    return data


def latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Protocol 2 writes bytes as `_codecs.encode(text, 'latin1')` (e.g. a numpy array's raw data)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode used for something other than bytes")
    return text.encode("latin1")


def inert_getattr(owner: Any, name: Any) -> PickledObject:
    """YOLOv5-seg pickles `Segment.detect = Detect.forward` as getattr(<class Detect>, 'forward'): honoured only
    on an inert class and a plain name, giving another inert record (nothing is looked up)."""
    if not (isinstance(owner, type) and issubclass(owner, PickledObject) and isinstance(name, str)):
        raise ForeignReference(f"builtins.getattr applied to {type(owner).__name__}")
    attribute = PickledObject()
    attribute.ref = f"{owner.ref}.{name}"
    return attribute


HONOURED = {("_codecs", "encode"): latin1_bytes,
            ("builtins", "getattr"): inert_getattr, ("__builtin__", "getattr"): inert_getattr,
            ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
            ("__builtin__", "set"): set}


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class SafeUnpickler(pickle.Unpickler):
    """The pickle of a torch zip: class references -> inert records, storages -> tensors from the zip."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, _Storage] = {}
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in HONOURED:
            return HONOURED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        ref = f"{module}.{name}"
        if not (ref.startswith(INERT_PREFIXES) or ref in INERT_NAMES):
            raise ForeignReference(ref)
        if ref not in self.classes:
            self.classes[ref] = type(name, (PickledObject,), {"ref": ref, "__module__": __name__})
        return self.classes[ref]

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                raw = bytearray(self.archive.read(name))
            except KeyError:
                raise pickle.UnpicklingError(f"tensor data {name} is missing from the zip") from None
            itemsize = torch.empty(0, dtype=kind.dtype).element_size()
            if not isinstance(numel, int) or len(raw) != numel * itemsize:
                raise pickle.UnpicklingError(f"tensor data {name} holds {len(raw)} bytes, expected {numel} x {itemsize}")
            flat = torch.frombuffer(raw, dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
            self.storages[key] = _Storage(flat)
        return self.storages[key]


class ForeignReference(pickle.UnpicklingError):
    """The pickle names something outside what a YOLOv5 checkpoint holds (a payload, or another program's file)."""

    def __init__(self, ref: str):
        super().__init__(ref)
        self.ref = ref


def _pickle_entry(archive: zipfile.ZipFile, path: Path) -> str:
    """The folder prefix of the zip's one `data.pkl` (torch writes `<name>/data.pkl`)."""
    entries = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(entries) != 1:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (a zip without one data.pkl)")
    return entries[0][: -len("data.pkl")]


def read_pickled_checkpoint(path: str | Path) -> tuple[Any, set[str]]:
    """(the unpickled object with PickledObject records for classes, the dotted class names the file refers to).

    Raises CheckpointError, one line naming the file, for anything unreadable or hostile.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _pickle_entry(archive, path)
            if f"{prefix}byteorder" in archive.namelist() and archive.read(f"{prefix}byteorder").strip() == b"big":
                raise CheckpointError(f"{path}: a big-endian checkpoint; re-save it on a little-endian machine")
            unpickler = SafeUnpickler(archive.read(f"{prefix}data.pkl"), archive, prefix)
            obj = unpickler.load()
    except CheckpointError:
        raise
    except ForeignReference as e:
        raise CheckpointError(f"{path}: refused: its pickle names {e.ref}, which no YOLOv5 checkpoint holds "
                              "(a code payload or another program's file); nothing in it was run") from None
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a zip: {e})") from None
    except (pickle.UnpicklingError, TypeError, ValueError, AttributeError, IndexError, KeyError, RuntimeError,
            OverflowError, MemoryError, RecursionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first[:160]}); nothing in it was run") from None
    return obj, set(unpickler.classes)
