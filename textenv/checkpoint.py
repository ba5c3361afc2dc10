"""Everything textenv writes to disk as a directory, and the pickle-free state codec of checkpoints.

(A single file, e.g. a report, is replaced atomically by :func:`write_file_atomically`.)

**Directories we write** (agent checkpoints, reward models, ...) are written by :func:`atomic_directory`:

* into a temporary sibling ``.NAME.tmp-XXXX`` that is then swapped in with two renames (old → ``.NAME.old``,
  new → ``NAME``), so at every instant either the old or the new complete directory exists;
* with a manifest ``textenv.json`` (:data:`MANIFEST_NAME`): ``{"format": "textenv-directory", "version": 1,
  "kind": <what the directory is, e.g. "agent_checkpoint">, "files": {relative path: {"size": bytes,
  "sha256": hex}}}``, written last. It proves the directory is ours and lets loads detect truncated or
  corrupted binary files.

An existing ``NAME`` is replaced only when it is an empty directory or a textenv directory of the same kind
holding nothing but files its manifest lists. Anything else (a file, a symbolic link, a directory with files
textenv did not write, e.g. TensorBoard events or a user's data) is refused with an :class:`InputError`;
nothing that is not provably ours is ever renamed away or removed. A process killed mid-save leaves either
``NAME`` intact plus a temporary directory (removed by the next save), or, between the two renames, only
``.NAME.old``: the next save and the next load (:func:`recover_directory`) rename it back.

**State** that is not a plain tensor dict (optimizer state, RNG states, counters, episodes in progress) is
stored by :func:`write_state` as two files, ``STEM.json`` (the structure, JSON) and ``STEM.safetensors``
(every tensor and array it references). :func:`encode_state` walks dicts (any hashable keys, e.g. the int
keys of an optimizer state), lists, tuples, ``None``/``bool``/``int`` (any size)/``float`` (NaN and ±inf
included)/``str``, torch tensors, NumPy arrays (dtypes safetensors lacks, such as ``uint32``, are stored as
the signed integer of the same width, bit for bit, with their NumPy dtype recorded) and NumPy scalars;
anything else is a ``TypeError`` at save time. Nothing is pickled and :func:`read_state` never unpickles:
a pickle (or ``torch.save`` archive) found where our files should be is refused unread.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from textenv.validation import InputError

#: The manifest every directory written by :func:`atomic_directory` carries.
MANIFEST_NAME = "textenv.json"
#: ``"format"`` value of a manifest (tells it apart from any other ``textenv.json``).
MANIFEST_FORMAT = "textenv-directory"
_MANIFEST_FILES = (MANIFEST_NAME, f".{MANIFEST_NAME}.part")  # the manifest and its next version being written
#: File name suffixes of formats that are pickles (loading one can run code): never loaded, always refused.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib")
#: errno values that mean the user's path cannot be written (read-only, no permission, disk or quota full).
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}

_TAG = "__textenv__"  # key marking a JSON object that encodes something other than a str-keyed dict
_SAFE_INT = 2**53  # ints at least this large are stored as strings (exact for every JSON reader)
_MAX_INT_DIGITS = 4000
#: NumPy dtypes stored as the torch dtype of the same name.
_NUMPY_NATIVE = ("bool", "int8", "uint8", "int16", "int32", "int64", "float16", "float32", "float64")
#: NumPy dtypes safetensors' torch side may lack: stored as the signed integer of the same width (bit for bit).
_NUMPY_VIEWED = {"uint16": "int16", "uint32": "int32", "uint64": "int64"}
_TORCH_DTYPES = {
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    *(getattr(torch, name) for name in ("uint16", "uint32", "uint64") if hasattr(torch, name)),
}


# ================================================================================== the state codec
def encode_state(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """``value`` as ``(JSON-able structure, tensors)``: every tensor or array is replaced by a reference to an
    entry of ``tensors`` (named by its path in ``value``, e.g. ``"optimizers/policy/state/0/exp_avg"``).

    Raises ``TypeError`` naming the path of the first value it cannot store exactly (a bug of the caller)."""
    tensors: dict[str, torch.Tensor] = {}
    return _encode(value, "", tensors), tensors


def decode_state(structure: Any, tensors: dict[str, torch.Tensor], source: str = "state") -> Any:
    """Inverse of :func:`encode_state` (tensors come back on the CPU). A structure that
    :func:`encode_state` cannot have written raises :class:`InputError` naming ``source``."""
    return _decode(structure, tensors, source, "")


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return _encode_numpy_scalar(value, path)
    if isinstance(value, int):
        return value if abs(value) < _SAFE_INT else {_TAG: "int", "value": str(int(value))}
    if isinstance(value, float):
        return value if math.isfinite(value) else {_TAG: "float", "value": repr(float(value))}
    if isinstance(value, torch.Tensor):
        return {_TAG: "tensor", "key": _store(_plain_tensor(value, path), path, tensors)}
    if isinstance(value, np.ndarray):
        stored, dtype = _numpy_as_tensor(value, path)
        return {_TAG: "ndarray", "key": _store(stored, path, tensors), "dtype": dtype}
    if type(value) is tuple:
        return {_TAG: "tuple", "items": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and _TAG not in value:
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in value.items()}
        items = []
        for key, item in value.items():
            if isinstance(key, (torch.Tensor, np.ndarray)):
                raise TypeError(f"cannot store the state at {path or '/'}: a dict key is a {type(key).__name__}")
            items.append([_encode(key, f"{path}/<key>", tensors), _encode(item, f"{path}/{key}", tensors)])
        return {_TAG: "dict", "items": items}
    raise TypeError(
        f"cannot store the state at {path or '/'}: a {type(value).__module__}.{type(value).__qualname__} "
        "(checkpoints hold only dicts, lists, tuples, None, bool, int, float, str, torch tensors and NumPy "
        "arrays/scalars, so that loading never unpickles)"
    )


def _encode_numpy_scalar(value: np.generic, path: str) -> dict[str, Any]:
    name = value.dtype.name
    if name not in _NUMPY_NATIVE and name not in _NUMPY_VIEWED:
        raise TypeError(f"cannot store the state at {path or '/'}: a NumPy scalar of dtype {name}")
    item = value.item()
    if isinstance(item, float) and not math.isfinite(item):
        item = {_TAG: "float", "value": repr(item)}
    elif isinstance(item, int) and abs(item) >= _SAFE_INT:
        item = {_TAG: "int", "value": str(item)}
    return {_TAG: "numpy_scalar", "dtype": name, "value": item}


def _plain_tensor(value: torch.Tensor, path: str) -> torch.Tensor:
    if value.layout != torch.strided or value.is_quantized or value.dtype not in _TORCH_DTYPES:
        raise TypeError(f"cannot store the tensor at {path or '/'}: dtype {value.dtype}, layout {value.layout}")
    return value.detach().to("cpu", copy=True).contiguous()


def _numpy_as_tensor(value: np.ndarray, path: str) -> tuple[torch.Tensor, str]:
    name = value.dtype.name
    if name not in _NUMPY_NATIVE and name not in _NUMPY_VIEWED:
        raise TypeError(f"cannot store the NumPy array at {path or '/'}: dtype {value.dtype} (numbers and bools only)")
    array = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("="))
    if name in _NUMPY_VIEWED:
        array = array.view(_NUMPY_VIEWED[name])
    return torch.from_numpy(array.copy()), name


def _store(tensor: torch.Tensor, path: str, tensors: dict[str, torch.Tensor]) -> str:
    key = path.lstrip("/") or "value"
    while key in tensors:  # two paths can spell alike (an int key 0 and a str key "0")
        key += "'"
    tensors[key] = tensor
    return key


def _decode(value: Any, tensors: dict[str, torch.Tensor], source: str, path: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, tensors, source, f"{path}/{i}") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        raise _damaged(source, f"unexpected {type(value).__name__} at {path or '/'}")
    if _TAG not in value:
        return {k: _decode(v, tensors, source, f"{path}/{k}") for k, v in value.items()}
    kind = value[_TAG]
    fields = {"int": {"value"}, "float": {"value"}, "tensor": {"key"}, "ndarray": {"key", "dtype"},
              "tuple": {"items"}, "dict": {"items"}, "numpy_scalar": {"dtype", "value"}}
    if kind not in fields or set(value) != fields[kind] | {_TAG}:
        raise _damaged(source, f"unknown entry {value!r:.80} at {path or '/'}")
    try:
        return _decode_tagged(kind, value, tensors, source, path)
    except (TypeError, ValueError, OverflowError) as err:
        if isinstance(err, InputError):
            raise
        raise _damaged(source, f"bad {kind} entry at {path or '/'}: {err}") from None


def _decode_tagged(kind: str, value: dict[str, Any], tensors: dict[str, torch.Tensor], source: str, path: str) -> Any:
    if kind == "int":
        text = value["value"]
        if not isinstance(text, str) or not re.fullmatch(r"-?\d{1,%d}" % _MAX_INT_DIGITS, text):
            raise ValueError(f"{text!r:.40} is not an integer")
        return int(text)
    if kind == "float":
        if value["value"] not in ("nan", "inf", "-inf"):
            raise ValueError(f"{value['value']!r:.40} is not nan, inf or -inf")
        return float(value["value"])
    if kind == "tuple":
        return tuple(_decode(value["items"], tensors, source, path))
    if kind == "dict":
        items = value["items"]
        if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 2 for i in items):
            raise ValueError("items must be [key, value] pairs")
        return {_decode(k, tensors, source, f"{path}/<key>"): _decode(v, tensors, source, f"{path}/{k}")
                for k, v in items}
    if kind == "numpy_scalar":
        dtype = _numpy_dtype(value["dtype"])
        item = _decode(value["value"], tensors, source, path)
        if not isinstance(item, (bool, int, float)):
            raise ValueError(f"{item!r:.40} is not a number")
        return dtype.type(item)
    tensor = tensors.get(value["key"]) if isinstance(value["key"], str) else None
    if tensor is None:
        raise _damaged(source, f"the tensor {value['key']!r:.80} (at {path or '/'}) is missing")
    if kind == "tensor":
        return tensor
    dtype = _numpy_dtype(value["dtype"])
    array = tensor.numpy()
    if dtype.name in _NUMPY_VIEWED:
        if array.dtype.name != _NUMPY_VIEWED[dtype.name]:
            raise ValueError(f"{dtype.name} must be stored as {_NUMPY_VIEWED[dtype.name]}, not {array.dtype}")
        array = array.view(dtype)
    elif array.dtype != dtype:
        raise ValueError(f"dtype {dtype} stored as {array.dtype}")
    return array.copy()


def _numpy_dtype(name: Any) -> np.dtype:
    if name not in _NUMPY_NATIVE and name not in _NUMPY_VIEWED:
        raise ValueError(f"dtype {name!r:.40} is not one textenv writes")
    return np.dtype(name)


# ================================================================================== state files
def write_state(directory: str | os.PathLike, stem: str, state: Any) -> None:
    """Write ``state`` as ``directory/STEM.json`` + ``directory/STEM.safetensors`` (see :func:`encode_state`)."""
    structure, tensors = encode_state(state)
    directory = Path(directory)
    text = json.dumps({"format": "textenv-state", "version": 1, "state": structure}, indent=1, allow_nan=False)
    (directory / f"{stem}.json").write_text(text, encoding="utf-8")
    save_file(tensors, str(directory / f"{stem}.safetensors"))


def read_state(directory: str | os.PathLike, stem: str) -> Any:
    """Read what :func:`write_state` wrote. Missing, damaged or pickled files raise :class:`InputError`."""
    directory = Path(directory)
    json_file = directory / f"{stem}.json"
    document = read_json(json_file)
    if not isinstance(document, dict) or document.get("format") != "textenv-state" or "state" not in document:
        raise _damaged(json_file, "it is not a textenv state file")
    return decode_state(document["state"], read_tensors(directory / f"{stem}.safetensors"), str(json_file))


def read_json(file: str | os.PathLike) -> Any:
    """Parse a JSON file we wrote; a missing, pickled or malformed file raises :class:`InputError` naming it."""
    file = Path(file)
    _require_file(file)
    refuse_pickle(file)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _damaged(file, str(err)) from None


def read_tensors(file: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` (CPU) with a missing, pickled, truncated or corrupted file refused as an
    :class:`InputError` naming it."""
    file = Path(file)
    _require_file(file)
    refuse_pickle(file)
    try:
        return load_file(str(file))
    except SafetensorError as err:
        raise _damaged(file, f"not a complete safetensors file ({err})") from None


def check_safetensors(file: str | os.PathLike) -> None:
    """Refuse (:class:`InputError`) a missing, pickled, truncated or malformed safetensors file, reading only
    its header (the tensors stay on disk)."""
    file = Path(file)
    _require_file(file)
    refuse_pickle(file)
    try:
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except SafetensorError as err:
        raise _damaged(file, f"not a complete safetensors file ({err})") from None


def is_pickle(file: str | os.PathLike) -> bool:
    """Whether ``file`` is a pickle or a ``torch.save`` archive, by its first bytes (nothing is unpickled)."""
    with open(file, "rb") as handle:
        head = handle.read(4)
    zip_archive = head == b"PK\x03\x04"  # torch.save's default (a zip of pickles)
    pickle_v2 = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # pickle protocols 2-5
    return zip_archive or pickle_v2


def refuse_pickle(file: str | os.PathLike) -> None:
    """Raise :class:`InputError` when ``file`` holds a pickle (whatever its name): its payload never runs."""
    if is_pickle(file):
        raise InputError(
            f"{file} holds a pickle (torch.save format), not the JSON/safetensors textenv writes; textenv never "
            "unpickles a file, because unpickling can run arbitrary code. Replace it with a checkpoint written by "
            "this version of textenv (and check where this file came from)"
        )


def pickle_files(directory: str | os.PathLike) -> list[Path]:
    """Files under ``directory`` named like a pickle format (``.pt``, ``.bin``, ``.pkl``...), sorted."""
    return sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES and not p.is_dir())


def _require_file(file: Path) -> None:
    if not file.is_file():
        raise InputError(f"damaged checkpoint: {file} is missing; pass a directory written by textenv's save()")


def _damaged(file: str | os.PathLike, detail: str) -> InputError:
    return InputError(f"damaged checkpoint: {file}: {detail}. Use an earlier checkpoint or start a new run")


# ================================================================================== manifests
def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a directory we wrote, or ``None`` when it has none (or a file of that name that is not
    ours, or is unreadable)."""
    file = Path(directory) / MANIFEST_NAME
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    if not isinstance(manifest.get("files", {}), dict):
        return None
    return manifest


def verify_directory(directory: str | os.PathLike, kind: str, suffixes: tuple[str, ...] = (".safetensors",)) -> None:
    """Check a directory we wrote before loading it: its manifest's kind is ``kind``, and every listed file
    whose name ends with one of ``suffixes`` has the recorded size and SHA-256 (truncation, corruption).

    A directory without a manifest passes (the loaders still validate every file they read)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        return
    if manifest.get("kind") != kind:
        raise InputError(f"{directory} holds a textenv directory of kind {manifest.get('kind')!r}, not {kind!r}; "
                         "pass the right directory")
    for name, record in manifest["files"].items():
        file = directory / name
        if not name.endswith(suffixes) or not file.is_file():
            continue
        refuse_pickle(file)
        recorded = record.get("size") if isinstance(record, dict) else None
        size = file.stat().st_size
        if size != recorded:
            raise _damaged(file, f"it is {size} bytes, {directory / MANIFEST_NAME} recorded {recorded} (truncated?)")
        if _sha256(file) != record.get("sha256"):
            raise _damaged(file, f"its SHA-256 differs from the one {directory / MANIFEST_NAME} recorded (corrupted)")


def discard_files(directory: str | os.PathLike, names: list[str] | tuple[str, ...]) -> None:
    """Remove the listed files (relative paths) from a directory we wrote and from its manifest, e.g. the
    resume-only state of an older checkpoint. Files the manifest does not list are left alone."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise InputError(f"{directory} was not written by textenv (no {MANIFEST_NAME}); nothing was removed")
    for name in names:
        if name in manifest["files"]:
            (directory / name).unlink(missing_ok=True)
            del manifest["files"][name]
    _replace_manifest(directory, manifest)


def _write_manifest(directory: Path, kind: str) -> None:
    files = {}
    for file in sorted(directory.rglob("*")):
        relative = file.relative_to(directory).as_posix()
        if relative == MANIFEST_NAME or file.is_dir():
            continue
        if file.is_symlink() or not file.is_file():
            raise RuntimeError(f"{file}: a textenv directory holds regular files only")
        files[relative] = {"size": file.stat().st_size, "sha256": _sha256(file)}
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "kind": kind, "files": files}
    _replace_manifest(directory, manifest)


def _replace_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write ``textenv.json`` by a rename, so that a kill never leaves it empty or half written."""
    part = directory / f".{MANIFEST_NAME}.part"
    part.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(part, directory / MANIFEST_NAME)


def _write_in_progress_marker(directory: Path, kind: str) -> None:
    marker = {"format": MANIFEST_FORMAT, "version": 1, "kind": kind, "complete": False,
              "pid": os.getpid(), "host": socket.gethostname()}
    (directory / MANIFEST_NAME).write_text(json.dumps(marker), encoding="utf-8")


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _foreign_entries(directory: Path, manifest: dict[str, Any] | None, empty_dirs_ok: bool = False) -> list[str]:
    """Relative paths under ``directory`` that its manifest does not account for (every file without one).

    A directory is accounted for when it leads to a listed file; an empty one that does not counts as foreign
    unless ``empty_dirs_ok`` (removing an empty directory loses nothing, but it may be the user's)."""
    listed = set(manifest["files"]) if manifest else set()
    parents = {parent.as_posix() for name in listed for parent in Path(name).parents}
    foreign = []
    for entry in sorted(directory.rglob("*")):
        relative = entry.relative_to(directory).as_posix()
        if relative in _MANIFEST_FILES and manifest is not None:
            continue
        if entry.is_dir() and not entry.is_symlink():
            if relative not in parents and not empty_dirs_ok and not any(entry.iterdir()):
                foreign.append(relative + "/")
            continue
        if relative not in listed:
            foreign.append(relative)
    return foreign


def _is_complete(directory: Path) -> bool:
    """A directory with a final manifest whose listed files all exist with their recorded sizes."""
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("complete", True) is not True or "kind" not in manifest:
        return False
    for name, record in manifest["files"].items():
        file = directory / name
        if not file.is_file() or not isinstance(record, dict) or file.stat().st_size != record.get("size"):
            return False
    return True


# ================================================================================== atomic directories
def _backup_path(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def recover_directory(path: str | os.PathLike) -> bool:
    """Finish a swap interrupted between its two renames: when ``path`` is missing and ``.NAME.old`` beside it
    is a complete directory we wrote, rename it back. Returns whether it did. Called by every save and load."""
    target = Path(path)
    backup = _backup_path(target)
    if os.path.lexists(target) or not backup.is_dir() or backup.is_symlink() or not _is_complete(backup):
        return False
    os.replace(backup, target)
    _fsync_directory(target.parent)
    return True


def check_replaceable(path: str | os.PathLike, kind: str) -> None:
    """Raise :class:`InputError` unless :func:`atomic_directory` may write ``path``: it does not exist, or is
    an empty directory, or a directory we wrote of this ``kind`` that holds only the files its manifest lists."""
    target = Path(path)
    if target.is_symlink():
        raise InputError(f"{target} is a symbolic link; textenv does not replace it: pass a new directory path")
    if not target.exists():
        return
    if not target.is_dir():
        raise InputError(f"{target} is a file, not a directory: choose another path for this output, or move the file")
    manifest = read_manifest(target)
    if manifest is not None and manifest.get("kind") != kind:
        raise InputError(f"{target} holds a textenv {manifest.get('kind')!r} directory; writing a {kind!r} there "
                         "would replace it: choose another path")
    foreign = _foreign_entries(target, manifest)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        origin = "files textenv did not write" if manifest else f"files textenv did not write (no {MANIFEST_NAME})"
        raise InputError(f"{target} holds {origin}: {shown}. textenv never deletes them: choose another path, "
                         "or move them elsewhere")


def write_file_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Create or replace the single file ``path`` with ``data`` so that a crash leaves the old content or the new,
    never part of either: a temporary file beside it, fsync, ``os.replace``. An existing file keeps its permission
    bits; a new one gets ``rw-r--r--``. Missing parent directories are created. An ``OSError`` (disk full,
    read-only, permission) always names ``path``, and the temporary file is removed. Returns ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(target.stat().st_mode) if target.is_file() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # write()/fsync() errors carry no file name
            raise type(err)(err.errno, err.strerror, str(target)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


@contextmanager
def atomic_directory(path: str | os.PathLike, kind: str = "directory") -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; when the block succeeds it becomes ``path``.

    ``kind`` names what the directory is (recorded in its manifest; an existing directory of another kind is
    not replaced). Before anything is written: a swap interrupted by a crash is recovered, ``path`` must be
    replaceable (:func:`check_replaceable`, else :class:`InputError`) and temporary directories left by killed
    saves of ``path`` are removed. When the block finishes, the manifest is written, every file is fsync'ed
    and the swap is two renames (old → ``.NAME.old``, new → ``path``) followed by removing the old files, so
    at every instant either the old or the new complete directory exists. On an exception nothing at ``path``
    changes and the temporary directory is removed. An unwritable path (permissions, read-only, disk full)
    raises :class:`InputError` naming it.
    """
    target = Path(path)
    check_replaceable(target, kind)  # before touching anything, even the parent
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{target}: a parent of this path is a file; choose another path") from None
    except OSError as err:
        raise _unwritable(target, err) from err
    recover_directory(target)
    check_replaceable(target, kind)
    _check_backup_slot(target)
    _remove_litter(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as err:
        raise _unwritable(target, err) from err
    try:
        _write_in_progress_marker(tmp, kind)
        yield tmp
        _write_manifest(tmp, kind)
        _fsync_tree(tmp)
        check_replaceable(target, kind)  # again: something may have been put there meanwhile
    except BaseException as err:
        _remove_temporary(tmp)
        if isinstance(err, OSError) and err.errno in _USER_ERRNOS:
            raise _unwritable(target, err) from err
        raise
    _swap_in(tmp, target)


def _swap_in(tmp: Path, target: Path) -> None:
    backup = _backup_path(target)
    if target.exists():
        os.replace(target, backup)
        _fsync_directory(target.parent)
    os.replace(tmp, target)
    _fsync_directory(target.parent)
    if backup.exists():
        _remove_owned(backup)


def _check_backup_slot(target: Path) -> None:
    """``.NAME.old`` must be absent or ours (a stale backup, removed here): it is renamed over in the swap."""
    backup = _backup_path(target)
    if not os.path.lexists(backup):
        return
    if backup.is_dir() and not backup.is_symlink() and not _foreign_entries(backup, read_manifest(backup), True):
        _remove_owned(backup)
        return
    raise InputError(f"{backup} is in the way: textenv briefly renames {target} to that name while replacing it, "
                     "and it holds files textenv did not write; move it elsewhere")


def _remove_litter(target: Path) -> None:
    """Remove ``.NAME.tmp-*`` directories that killed saves of ``target`` left (ours, and not in use by a
    live process); anything else is left alone."""
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        if not tmp.is_dir() or tmp.is_symlink():
            continue
        marker = read_manifest(tmp)
        if marker is None:
            if not any(p.name != MANIFEST_NAME for p in tmp.iterdir()):  # killed before or while marking it
                shutil.rmtree(tmp, ignore_errors=True)
            continue
        if marker.get("complete", True) is False and _writer_alive(marker):
            continue  # another process is writing it right now
        _remove_temporary(tmp)


def _remove_temporary(tmp: Path) -> None:
    """Remove a temporary directory of ours, its marker last: a kill halfway leaves it still provably ours."""
    for entry in tmp.iterdir():
        if entry.name == MANIFEST_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)


def _writer_alive(marker: dict[str, Any]) -> bool:
    """Whether the process that started this temporary directory may still be writing it."""
    if marker.get("host") != socket.gethostname():
        return True  # another machine's save: not ours to judge
    pid = marker.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False  # our own process is not writing it (saves of one target run one at a time)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_owned(directory: Path) -> None:
    """Remove the files ``directory``'s manifest lists, then the manifest, then the directories left empty.
    Anything else stays (with a warning): this never deletes what textenv did not write."""
    manifest = read_manifest(directory)
    for name in (manifest or {}).get("files", {}):
        file = directory / name
        if file.is_file() and not file.is_symlink() and file.resolve().is_relative_to(directory.resolve()):
            file.unlink()
    if manifest is not None:
        (directory / f".{MANIFEST_NAME}.part").unlink(missing_ok=True)
        (directory / MANIFEST_NAME).unlink(missing_ok=True)
    for sub in sorted((p for p in directory.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        _rmdir_if_empty(sub)
    _rmdir_if_empty(directory)
    if directory.exists():
        warnings.warn(f"{directory}: left in place, it holds files textenv did not write", stacklevel=3)


def _rmdir_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass


def _unwritable(target: Path, err: OSError) -> InputError:
    return InputError(f"cannot write {target}: {err.strerror} ({err.filename or target}); choose a writable path "
                      "with free space")


def _fsync_tree(root: Path) -> None:
    for entry in sorted(root.rglob("*"), reverse=True):
        if entry.is_file():
            with open(entry, "rb") as handle:
                os.fsync(handle.fileno())
        elif entry.is_dir():
            _fsync_directory(entry)
    _fsync_directory(root)


def _fsync_directory(directory: Path) -> None:
    """Make renames and new entries in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
