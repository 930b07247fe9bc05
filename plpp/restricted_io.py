"""Read weights and checkpoint files without running anything stored in them.

``torch.jit.load`` executes the TorchScript code inside an archive (a crafted ``__setstate__`` can
write files), and plain ``pickle`` constructs any class a file names. This module reads both kinds of
file with an unpickler that knows a short list of harmless names (tensor and storage rebuilding,
ordered dicts, dtypes, sizes) and nothing else:

* :func:`read_torchscript_state_dict` gives what ``torch.jit.load(path).state_dict()`` gives, for
  archives made by ``torch.jit.trace`` / ``torch.jit.script`` (OpenAI's CLIP releases among them),
  without loading the archive's code: the module objects in ``data.pkl`` become inert records, and
  which of their tensors are parameters or buffers is read from the class headers of the archive's
  source files (parsed, never executed).
* :func:`load_restricted` unpickles a ``torch.save`` file (zip format). ``unknown="refuse"`` stops at
  the first name outside the list; ``unknown="skip"`` puts a :class:`SkippedObject` (the name and the
  arguments it would have been built with, never constructed) in its place, so files that also hold
  pickled Python objects (e.g. Dassl's scheduler state) can still give their tensors.

Anything else is a :class:`RestrictedLoadError` with one line naming the file and what was refused.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Union

import torch

Source = Union[str, "os.PathLike[str]"]

#: Storage classes a pickle may name (``torch.FloatStorage`` ...) and the element type each holds.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128, "ComplexFloatStorage": torch.complex64,
    "UntypedStorage": torch.uint8,
}
#: dtypes a pickle may name as ``torch.<name>``.
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name) for name in (
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
        "complex128", "complex64", "double", "float", "half", "long", "int", "short",
    )
}
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # torch.save before the zip format


class RestrictedLoadError(ValueError):
    """A file that cannot be read as tensors only; the message names the file and the refused part."""


class SkippedObject:
    """What an unknown pickled object would have been: its class or function ``name``, ``args`` and ``state``.

    Made by :func:`load_restricted` with ``unknown="skip"`` in place of the object; nothing of the
    named class runs (no ``__init__``, ``__new__``, ``__setstate__`` or ``__reduce__`` of it).
    """

    name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> SkippedObject:
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # calling the stand-in (pickle's REDUCE) only records the arguments, in __new__

    # Items a pickle adds to a container object (SETITEMS/APPENDS, e.g. an optimizer's ``defaultdict``
    # state inside a pickled scheduler) are recorded as they come, never handed to the named class.
    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({self.name!r})"


class ScriptObject(SkippedObject):
    """An object of a TorchScript class (``__torch__.<...>``) from an archive's ``data.pkl``, never built."""


def _stand_in(kind: type, name: str) -> type:
    """A subclass of ``kind`` standing in for the class or function ``name``."""
    return type(kind.__name__, (kind,), {"name": name, "__qualname__": kind.__qualname__})


@dataclass
class _StorageType:
    name: str
    dtype: torch.dtype


@dataclass
class _FileStorage:
    """The bytes of one storage record of the archive and the element type they hold."""

    data: torch.UntypedStorage
    dtype: torch.dtype


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    """``torch._utils._rebuild_tensor_v2`` with its arguments checked, on a storage read from the file."""
    if not isinstance(storage, _FileStorage):
        raise RestrictedLoadError("a tensor is not built on a storage of the file")
    size, stride = tuple(size), tuple(stride)
    ints = (isinstance(storage_offset, int) and storage_offset >= 0 and len(size) == len(stride)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (*size, *stride)))
    if not ints:
        raise RestrictedLoadError(f"a tensor has a malformed size {size!r} or stride {stride!r}")
    n_items = storage.data.nbytes() // torch.empty((), dtype=storage.dtype).element_size()
    extent = 1 + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else 0
    if storage_offset + extent > n_items:
        raise RestrictedLoadError(f"a tensor of size {size} reaches past the end of its storage")
    tensor = torch.empty((0,), dtype=storage.dtype).set_(storage.data, storage_offset, size, stride)
    tensor.requires_grad_(bool(requires_grad) and (storage.dtype.is_floating_point or storage.dtype.is_complex))
    return tensor


def _rebuild_parameter(data, requires_grad, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise RestrictedLoadError("a parameter is not built from a tensor")
    return torch.nn.Parameter(data, bool(requires_grad))


def _identity(value, *args):
    return value


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
}


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler, so BUILD can be restricted too
    """Unpickles tensors, storages and plain containers; any other name is refused or skipped."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], archive: zipfile.ZipFile, prefix: str, what: str, unknown: str,
                 script_classes: bool) -> None:
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.what = what
        self.unknown = unknown
        self.script_classes = script_classes
        self.storages: dict[str, _FileStorage] = {}
        self.stand_ins: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        if module == "torch" and name in DTYPES:
            return DTYPES[name]
        qualname = f"{module}.{name}"
        if self.script_classes and (module == "__torch__" or module.startswith("__torch__.")):
            return self._stand_in(qualname, ScriptObject)
        if self.unknown == "skip":
            return self._stand_in(qualname, SkippedObject)
        raise RestrictedLoadError(
            f"{self.what} asks for the Python object '{qualname}', which a file of tensors never needs; it was "
            "not loaded, because building it could run code from the file")

    def _stand_in(self, qualname: str, kind: type) -> type:
        if qualname not in self.stand_ins:
            self.stand_ins[qualname] = _stand_in(kind, qualname)
        return self.stand_ins[qualname]

    def persistent_load(self, pid: Any) -> _FileStorage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise RestrictedLoadError(f"{self.what} refers to external data {str(pid)[:80]!r} that is not a storage")
        _, kind, key, _location, numel = pid
        if key not in self.storages:
            self.storages[key] = self._read_storage(key, kind, numel)
        return self.storages[key]

    def _read_storage(self, key: str, kind: _StorageType, numel: Any) -> _FileStorage:
        record = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(record)
        except KeyError:
            raise RestrictedLoadError(f"{self.what} refers to tensor data {record} that the archive lacks "
                                      "(truncated or damaged file)") from None
        itemsize = torch.empty((), dtype=kind.dtype).element_size()
        if not isinstance(numel, int) or numel < 0 or numel * itemsize > info.file_size:
            raise RestrictedLoadError(f"{self.what}: tensor data {record} is shorter than its {numel!r} elements "
                                      "(truncated or damaged file)")
        buf = bytearray(numel * itemsize)
        with self.archive.open(info) as f:
            if f.readinto(memoryview(buf)) != len(buf):
                raise RestrictedLoadError(f"{self.what}: tensor data {record} is truncated")
        data = torch.frombuffer(buf, dtype=torch.uint8).untyped_storage() if buf else torch.UntypedStorage(0)
        return _FileStorage(data, kind.dtype)

    def load_build(self) -> None:
        """BUILD sets the state of stand-in objects and attributes of ordered dicts, nothing else."""
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, SkippedObject):  # ScriptObject included
            inst.state = state
        elif type(inst) is OrderedDict and isinstance(state, dict):
            inst.__dict__.update({str(k): v for k, v in state.items()})  # e.g. a state dict's _metadata
        else:
            raise RestrictedLoadError(f"{self.what} sets the state of a {type(inst).__name__}, which a file "
                                      "of tensors never does")

    dispatch[pickle.BUILD[0]] = load_build


def _open_zip(path: Source, what: str) -> zipfile.ZipFile:
    if not os.path.isfile(path):
        raise RestrictedLoadError(f"{what}: file not found")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError):
        with open(path, "rb") as f:
            head = f.read(len(LEGACY_MAGIC))
        if head == LEGACY_MAGIC:
            raise RestrictedLoadError(f"{what} is in the legacy (pre-1.6) torch.save format, which this reader "
                                      "does not read; re-save it with a current PyTorch") from None
        raise RestrictedLoadError(f"{what} is not a PyTorch file (a torch.save or TorchScript zip archive): "
                                  "it may be truncated, or another kind of file") from None


def _archive_prefix(archive: zipfile.ZipFile, what: str) -> str:
    """The top folder of a PyTorch zip archive (``archive/``, ``<model name>/``), which holds ``data.pkl``."""
    tops = [n[: -len("data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(tops) != 1:
        raise RestrictedLoadError(f"{what} is a zip archive without a PyTorch data.pkl")
    prefix = tops[0]
    try:
        order = archive.read(prefix + "byteorder").decode().strip()
    except KeyError:
        order = "little"
    if order != "little":
        raise RestrictedLoadError(f"{what} was saved on a {order}-endian machine; this reader needs little-endian")
    return prefix


def _unpickle(archive: zipfile.ZipFile, prefix: str, what: str, unknown: str, script_classes: bool) -> Any:
    data = archive.read(prefix + "data.pkl")
    unpickler = _RestrictedUnpickler(io.BytesIO(data), archive, prefix, what, unknown, script_classes)
    try:
        return unpickler.load()
    except RestrictedLoadError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RuntimeError, zipfile.BadZipFile, OSError, zlib.error) as exc:
        raise RestrictedLoadError(f"{what} is damaged ({type(exc).__name__}: {exc})") from None


def load_restricted(path: Source, *, unknown: str = "refuse", what: str | None = None) -> Any:
    """Unpickle the ``torch.save`` file ``path`` with tensors, storages and plain containers only.

    ``unknown="refuse"`` raises :class:`RestrictedLoadError` at the first other name; ``"skip"`` puts
    a :class:`SkippedObject` in its place instead (never constructing it). ``what`` names the file in
    messages (default: its path). Tensors come back on the CPU, as saved (dtype, strides, sharing).
    """
    if unknown not in ("refuse", "skip"):
        raise ValueError(f"unknown must be 'refuse' or 'skip', got {unknown!r}")
    what = what or str(path)
    with _open_zip(path, what) as archive:
        try:
            prefix = _archive_prefix(archive, what)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise RestrictedLoadError(f"{what} is damaged ({type(exc).__name__}: {exc})") from None
        return _unpickle(archive, prefix, what, unknown, script_classes=False)


def is_torchscript_archive(path: Source) -> bool:
    """True when ``path`` is a zip archive with TorchScript code (``<top>/code/`` or ``constants.pkl``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return False
    return any(n.count("/") >= 1 and n.split("/", 2)[1] in ("code", "constants.pkl") for n in names)


@dataclass
class _ScriptClass:
    parameters: list[str]
    buffers: list[str]
    is_module: bool
    has_setstate: bool


def _script_classes(archive: zipfile.ZipFile, prefix: str, what: str) -> dict[str, _ScriptClass]:
    """Qualified name → parameter/buffer names of each class in the archive's ``code/`` (parsed, not run)."""
    classes: dict[str, _ScriptClass] = {}
    code = prefix + "code/"
    for name in archive.namelist():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code) : -len(".py")].replace("/", ".")
        try:
            tree = ast.parse(archive.read(name).decode("utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
            raise RestrictedLoadError(f"{what}: cannot read the class definitions in {name} ({exc})") from None
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                classes[f"{module}.{node.name}"] = _read_class(node)
    return classes


def _read_class(node: ast.ClassDef) -> _ScriptClass:
    lists: dict[str, list[str]] = {"__parameters__": [], "__buffers__": []}
    has_setstate = False
    for item in node.body:
        if isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(item.targets[0], ast.Name):
            target = item.targets[0].id
            if target in lists and isinstance(item.value, ast.List):
                lists[target] = [e.value for e in item.value.elts
                                 if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        elif isinstance(item, ast.FunctionDef) and item.name == "__setstate__":
            has_setstate = True
    is_module = any(isinstance(b, ast.Name) and b.id == "Module" for b in node.bases)
    return _ScriptClass(lists["__parameters__"], lists["__buffers__"], is_module, has_setstate)


def _module_tensors(obj: ScriptObject, classes: dict[str, _ScriptClass], what: str,
                    prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for each parameter and buffer of ``obj`` and its submodules, in state-dict order."""
    cls = classes.get(obj.name)
    if cls is None or not cls.is_module:
        raise RestrictedLoadError(f"{what}: the archive has no module definition for {obj.name}")
    if cls.has_setstate or not isinstance(obj.state, dict):
        raise RestrictedLoadError(
            f"{what}: class {obj.name} restores itself with its own __setstate__ code, which a weights "
            "file never needs; it was not run and the file was not loaded")
    state = obj.state
    for names in (cls.parameters, cls.buffers):
        for name in state:
            if name in names and state[name] is not None:
                if not isinstance(state[name], torch.Tensor):
                    raise RestrictedLoadError(f"{what}: {prefix}{name} of {obj.name} is not a tensor")
                yield prefix + name, state[name].detach().requires_grad_(False)
    for name, value in state.items():
        if isinstance(value, ScriptObject) and getattr(classes.get(value.name), "is_module", False):
            yield from _module_tensors(value, classes, what, f"{prefix}{name}.")


def read_torchscript_state_dict(path: Source, what: str | None = None) -> OrderedDict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, as ``torch.jit.load(path).state_dict()`` has them.

    Nothing from the archive runs: its code is only parsed for each class's ``__parameters__`` and
    ``__buffers__`` lists, and ``data.pkl`` is read with the restricted unpickler. A class that
    restores itself with its own ``__setstate__`` is refused.
    """
    what = what or str(path)
    with _open_zip(path, what) as archive:
        try:
            prefix = _archive_prefix(archive, what)
            classes = _script_classes(archive, prefix, what)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise RestrictedLoadError(f"{what} is damaged ({type(exc).__name__}: {exc})") from None
        root = _unpickle(archive, prefix, what, "refuse", script_classes=True)
    if not isinstance(root, ScriptObject):
        raise RestrictedLoadError(f"{what}: the archive's data.pkl does not hold a TorchScript module")
    return OrderedDict(_module_tensors(root, classes, what))
