"""Reading checkpoint files without running code they might carry.

A pickle may name any importable callable and have it called while it loads (``os.system``
included); ``torch.load(weights_only=False)`` and ``pickle.load`` do call it. Run directories
are copied between machines and resumed by people who did not make them, so nothing here
unpickles with them:

- ``trainer.pt`` and ``model_state.pt``: ``torch.load(weights_only=True)``, which builds
  tensors and plain data only, plus the few numpy types of the RNG state that earlier
  versions saved (``np.random.get_state()``: an array and a dtype). A file that asks for
  anything else is refused before it is read, naming what it asks for.
- ``shards/.metadata`` (torch.distributed.checkpoint's index, a pickle): an unpickler that
  builds only the classes of that index (``torch.distributed.checkpoint.metadata``, the
  file system reader's ``_StorageInfo``, ``torch.Size``, dtypes, layouts, paths); the index
  may name only shard files inside ``shards/``, with no read transforms.
- the shards' non-tensor entries (an optimiser's hyperparameters), which the distributed
  checkpoint reader would ``torch.load(weights_only=False)``: ``weights_only=True`` instead.

What this does not protect against: wrong values in well-formed files (the loader checks
keys, types and shapes against the model; see ``srft.training.checkpoint``) and files
large enough to exhaust memory.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
from pathlib import Path, PurePath

import torch

CONVERT_HINT = "srft convert-checkpoint"


class UnsafeFileError(pickle.UnpicklingError):
    """A checkpoint file that would import something srft never saves; it is not loaded.
    ``convertible``: a torch.save file, which ``srft convert-checkpoint`` can rewrite if trusted."""

    convertible = False


class UnsafeTorchFile(UnsafeFileError):
    """``core``: the message without the conversion hint (for a list of several files' problems)."""

    convertible = True

    def __init__(self, core: str, hint: str):
        super().__init__(f"{core} ({hint})")
        self.core = core


# --------------------------------------------------------------------------- torch.save files
def _legacy_numpy() -> list:
    """What earlier versions' ``trainer.pt`` needs beyond tensors: ``np.random.get_state()`` (a
    uint32 array) and numpy scalars. They build arrays and numbers from bytes and call nothing else."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    allowed = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    # files written under numpy 1 name numpy.core, under numpy 2 numpy._core
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{mod}._reconstruct"), (multiarray.scalar, f"{mod}.scalar")]
    allowed += [(type(np.dtype(t)), f"numpy.dtypes.{type(np.dtype(t)).__name__}")
                for t in ("uint32", "float64", "int64", "float32", "bool")]
    return allowed


def _foreign_globals(path: Path) -> list[str]:
    """The globals a torch.save file names beyond the allowed ones, read from its pickle
    without running it ([] when the file is not a zip archive: the load says what is wrong)."""
    with torch.serialization.safe_globals(_legacy_numpy()):
        try:
            return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # not a torch.save zip, or cut short: torch.load names the problem
            return []


def load_torch_file(path: Path):
    """``torch.load`` of a checkpoint file that can build tensors and plain data only.

    Raises ``UnsafeFileError`` (one line: the file, what it asks for, how to convert a trusted
    one) for a file that names other globals; corrupt files raise torch's or zipfile's error.
    """
    path = Path(path)
    foreign = _foreign_globals(path)
    if foreign:
        raise UnsafeTorchFile(unsafe_message(path, foreign), convert_hint(path))
    try:
        with torch.serialization.safe_globals(_legacy_numpy()):
            return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:  # e.g. a global pushed at run time that the scan above cannot see
        raise UnsafeTorchFile(unsafe_message(path, [_first_line(e)]), convert_hint(path)) from None


def unsafe_message(path: Path, what: list[str]) -> str:
    return (f"{path.name} asks to import {', '.join(what[:3])}{' ...' if len(what) > 3 else ''}, which srft "
            f"never saves: not loaded, since loading it could run code")


def convert_hint(path: Path) -> str:
    return f"if you trust where it comes from, convert it: {CONVERT_HINT} {path.parent}"


def _first_line(e: BaseException) -> str:
    """What a refused ``weights_only`` load asked for: the global's name where torch's long message
    (advice first) names one ("Unsupported global: GLOBAL posix.system ..."), else its first line."""
    text = str(e).strip()
    found = re.search(r"GLOBAL:? ?([\w.]+)", text)
    if found:
        return found.group(1)
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------- distributed checkpoint index
def _metadata_classes() -> dict[tuple[str, str], object]:
    """(module, name) -> object: what a ``shards/.metadata`` written by torch.distributed.checkpoint holds."""
    import pathlib

    import torch.distributed.checkpoint.filesystem as fs
    import torch.distributed.checkpoint.metadata as md

    allowed = {("torch.distributed.checkpoint.metadata", n): getattr(md, n)
               for n in ("Metadata", "StorageMeta", "MetadataIndex", "TensorProperties", "BytesStorageMetadata",
                         "TensorStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")
               if hasattr(md, n)}
    allowed[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = fs._StorageInfo
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout  # a name -> torch.strided
    for name in dir(torch):  # dtypes are pickled as the torch attribute of their name
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
    for cls in (pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath,
                pathlib.Path):  # checkpoint_id: a path object, built from its parts
        allowed[("pathlib", cls.__name__)] = cls
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """Builds the classes of a distributed checkpoint's index and nothing else: every other global
    (os.system, builtins.eval, any class with a harmful ``__reduce__``) fails before it is called."""

    _allowed: dict | None = None

    def find_class(self, module: str, name: str):
        if _MetadataUnpickler._allowed is None:
            _MetadataUnpickler._allowed = _metadata_classes()
        found = _MetadataUnpickler._allowed.get((module, name))
        if found is None:
            raise UnsafeFileError(f"{module}.{name}")
        return found

    def persistent_load(self, pid):
        raise UnsafeFileError(f"persistent id {pid!r}")


def read_shard_metadata(path: Path):
    """The ``Metadata`` of a distributed checkpoint ``path`` (its ``shards/`` directory), read without
    running code; it must name shard files inside ``path`` only, read without transforms."""
    from torch.distributed.checkpoint.metadata import Metadata

    meta_file = Path(path) / ".metadata"
    try:
        with open(meta_file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except UnsafeFileError as e:
        raise UnsafeFileError(f"{meta_file.parent.name}/{meta_file.name} asks to import {e}, which a distributed "
                              f"checkpoint's index never holds: not loaded, since loading it could run code") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise ValueError(f"{meta_file.parent.name}/{meta_file.name} is not a distributed checkpoint's index "
                         f"(it holds a {type(metadata).__name__})")
    for info in (metadata.storage_data or {}).values():
        rel = getattr(info, "relative_path", None)
        if not isinstance(rel, str) or PurePath(rel).name != rel or rel in ("", ".", ".."):
            raise ValueError(f"{meta_file.parent.name}/{meta_file.name} names a shard file outside "
                             f"{meta_file.parent.name}/ ({rel!r})")
        if getattr(info, "transform_descriptors", None):
            raise ValueError(f"{meta_file.parent.name}/{meta_file.name} asks for read transforms "
                             f"{info.transform_descriptors!r}, which srft never writes")
    return metadata


def check_shard_entries(path: Path, metadata) -> None:
    """Load each non-tensor entry of the shards in ``path`` (an optimiser's hyperparameters: small)
    with ``weights_only=True``, so that one asking to run code is found before anything loads."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    for index, info in (metadata.storage_data or {}).items():
        if not isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue
        with open(Path(path) / info.relative_path, "rb") as f:  # a plain name: read_shard_metadata checked
            f.seek(info.offset)
            data = f.read(info.length)
        try:
            torch.load(io.BytesIO(data), weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeFileError(f"{Path(path).name}/{info.relative_path}: its entry {index.fqn} asks to import "
                                  f"{_first_line(e)}: not loaded, since loading it could run code") from None


def shard_reader(path: Path):
    """A ``FileSystemReader`` of ``path`` whose index is read by ``read_shard_metadata``."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeShardReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            if kwargs.get("rank") is not None:  # per-rank index files: srft never writes them
                raise ValueError(f"{path}: a per-rank distributed checkpoint index, which srft never writes")
            metadata = read_shard_metadata(Path(path))
            if getattr(metadata, "storage_meta", None) is None:  # as the reader it stands in for does
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeShardReader(str(path))


def shard_planner():
    """The default load planner, but the shards' non-tensor entries load with ``weights_only=True``."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            try:
                plain = torch.load(value, weights_only=True)  # an optimiser's lr, betas, ...: plain values
            except pickle.UnpicklingError as e:
                raise UnsafeFileError(f"a shard's entry {read_item.dest_index.fqn} asks to import "
                                      f"{_first_line(e)}: not loaded, since loading it could run code") from None
            # handed on re-serialised, so that the planner's own placement of it applies unchanged
            buf = io.BytesIO()
            torch.save(plain, buf)
            buf.seek(0)
            super().load_bytes(read_item, buf)

    return SafeLoadPlanner()
