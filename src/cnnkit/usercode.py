"""Your own model and dataset code, imported only where you name it.

A *code reference* names a callable in your code: ``FILE.py:NAME`` (a Python file, by
path) or ``package.module:NAME`` (a module Python can import: installed, or on
``PYTHONPATH``). ``cnnkit train --model my_models.py:MyModel`` and ``--data
my_data.py:MyDataset`` use them.

The rule (never run code that arrives as data):

* A new training run imports the code its own ``--model``/``--data`` (or
  ``cnnkit.train(model=..., data=...)``) names: naming it is the permission.
* Everything that starts from a checkpoint or run folder (``eval``, ``predict``,
  ``export``, ``serve``, ``report``, ``explain``, ``summary``, ``train --resume``) finds
  only a *record* of where the code came from (the reference, the file's absolute path and
  SHA-256, or the module name) and imports nothing on its own. It imports your code only
  when you say so: ``--trust-code FILE_OR_MODULE`` on the command line (repeatable), in
  Python ``trust_code=[...]`` (or ``True``: whatever the checkpoint names) or
  ``with cnnkit.trust_code(...)``, or the ``CNNKIT_TRUST_CODE`` environment variable
  (entries separated by ``os.pathsep``). A trusted file stands for the recorded file of
  the same name (so a moved copy works); a trusted module for the same module name.
  Without it, the error says exactly what to pass. Checkpoints themselves still load
  with ``torch.load(weights_only=True)``.

Imported code stays imported for the process, as ``import`` does; the file's folder is
put on ``sys.path`` (as running it as a script would), so it can import its neighbours.
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cnnkit import settings
from cnnkit.errors import CnnkitError, UsageError

ENV_VAR = settings.TRUST_CODE
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"^{_IDENT}(\.{_IDENT})*$")


@dataclass(frozen=True)
class CodeRef:
    """A parsed ``FILE.py:NAME`` or ``module:NAME`` reference.

    Attributes:
        text: the reference as written (the key it is known by in configs and checkpoints).
        kind: ``file`` or ``module``.
        target: the file path as written, or the module name.
        attr: the attribute in that file or module (dots reach nested ones).
    """

    text: str
    kind: str
    target: str
    attr: str

    @property
    def label(self) -> str:
        """A short name for run folders and titles (the attribute's last part)."""
        return self.attr.rpartition(".")[2]


def parse_ref(text: str, reserved: Iterable[str] = ()) -> CodeRef | None:
    """``FILE.py:NAME`` or ``module:NAME`` as a :class:`CodeRef`; None for anything else.

    ``reserved`` prefixes (``timm``, ``tv``) are model sources, never modules.
    """
    if not isinstance(text, str) or ":" not in text:
        return None
    target, _, attr = text.rpartition(":")
    if not _DOTTED.match(attr) or not target:
        return None
    if target.endswith(".py"):
        return CodeRef(text, "file", target, attr)
    if _DOTTED.match(target) and target not in set(reserved):
        return CodeRef(text, "module", target, attr)
    return None


# ----------------------------------------------------------------------------- trust

_ALL = "*all*"  # trust_code=True: whatever a checkpoint names
_TRUST: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("cnnkit_trust_code", default=())
_BOUND: dict[str, Any] = {}  # reference text -> the object it names, for this process


@contextmanager
def trust_code(*items: str | bool) -> Iterator[None]:
    """Allow importing these files or modules for the checkpoints loaded inside the block.

    Each item is a ``.py`` file (it stands for any recorded file of the same name), a
    module name, a full ``FILE.py:NAME`` reference, or ``True`` (whatever a checkpoint
    names: only for checkpoints you made or trust, like Hugging Face's
    ``trust_remote_code``).

    Raises:
        UsageError: a named file does not exist.
    """
    token = _TRUST.set(_TRUST.get() + _normalise(items))
    try:
        yield
    finally:
        _TRUST.reset(token)


def _normalise(items: Iterable[Any] | str | bool | None) -> tuple[str, ...]:
    """Trusted items as strings: file paths (checked to exist), module names, or ``_ALL``."""
    if items is None or items is False:
        return ()
    if items is True:
        return (_ALL,)
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    out: list[str] = []
    for item in items:
        if item is True:
            out.append(_ALL)
            continue
        if item is None or item is False:
            continue
        text = os.fspath(item)
        ref = parse_ref(text)
        text = ref.target if ref is not None else text  # FILE.py:NAME trusts FILE.py
        if text.endswith(".py"):
            if not Path(text).expanduser().is_file():
                raise UsageError(f"--trust-code: file not found: {text}")
            text = str(Path(text).expanduser().resolve())
        elif not _DOTTED.match(text):
            raise UsageError(f"--trust-code expects a .py file or a module name (package.module), got {text!r}")
        out.append(text)
    return tuple(out)


def _trusted(extra: Any = None) -> tuple[str, ...]:
    return _normalise(extra) + _TRUST.get() + _normalise(settings.trusted_code())


def _trusted_source(record: dict[str, Any], extra: Any) -> str | None:
    """The file or module to import for ``record`` under the current trust, or None."""
    recorded_file = record.get("path")
    module = record.get("module")
    for item in _trusted(extra):
        if item == _ALL:
            if record["kind"] == "module" or (record["kind"] == "registered" and not recorded_file):
                return module if module and module != "__main__" else None
            return recorded_file or None
        if item.endswith(".py"):
            if recorded_file and Path(item).name == Path(recorded_file).name:
                return item
        elif module and item == module:
            return item
    return None


# ----------------------------------------------------------------------------- loading


def load(text: str, reserved: Iterable[str] = ()) -> Any:
    """Import the code ``text`` names, now (the caller's explicit request), and remember it.

    Raises:
        UsageError: not a reference, file or module not found, no such attribute.
        CnnkitError: the code raised while being imported (its message and line).
    """
    ref = parse_ref(text, reserved)
    if ref is None:
        raise UsageError(f"{text!r} is not a code reference (FILE.py:NAME or package.module:NAME)")
    if text not in _BOUND:
        _BOUND[text] = attribute(_import(ref.target), ref.attr, ref.target)
    return _BOUND[text]


def get(text: str, what: str = "model", reserved: Iterable[str] = ()) -> Any:
    """What the reference ``text`` names, if this process imported it or it is trusted.

    Raises:
        UsageError: the code was neither imported by an explicit request nor trusted
            (the message says what to pass).
    """
    if text not in _BOUND:
        ref = parse_ref(text, reserved)
        if ref is None:
            raise UsageError(f"{text!r} is not a code reference (FILE.py:NAME or package.module:NAME)")
        bind_record(_record_of(ref), what)
    return _BOUND[text]


def is_bound(text: str) -> bool:
    return text in _BOUND


def bind_record(
    record: dict[str, Any] | None, what: str = "model", *, trust: Any = None,
    registered: Callable[[], bool] | None = None,
) -> None:  # fmt: skip
    """Make the code a checkpoint records usable, importing it only under trust.

    Args:
        record: from :func:`record` / :func:`record_registered` (None: nothing to do).
        what: ``model`` or ``dataset``, for messages.
        trust: extra trusted items (a ``trust_code=`` keyword), besides ``trust_code()``
            blocks and ``$CNNKIT_TRUST_CODE``.
        registered: for ``registered`` records: whether the name is in the registry now.

    Raises:
        UsageError: the code is not trusted; the message names the ``--trust-code`` value.
    """
    if record is None:
        return
    kind = record.get("kind")
    if kind == "registered" and registered is not None and registered():
        return
    if kind != "registered" and record["ref"] in _BOUND:
        return
    source = _trusted_source(record, trust)
    if source is None:
        raise _untrusted(record, what)
    module = _import(source)
    if kind == "registered":
        if registered is not None and not registered():
            raise CnnkitError(f"importing {source} did not register model {record['ref']!r} "
                              f"(it was registered by {record.get('module')}.{record.get('attr')} "
                              "when trained)")  # fmt: skip
        return
    _BOUND[record["ref"]] = attribute(module, record["attr"], source)


def trust_hint(record: dict[str, Any]) -> str:
    """What ``--trust-code`` needs for this record: a module's name, else the file."""
    if record.get("kind") == "module" or not record.get("path"):
        return str(record.get("module"))
    return str(record["path"])


def _untrusted(record: dict[str, Any], what: str) -> UsageError:
    where = record.get("path") or record.get("module")
    name = record.get("attr") or record["ref"]
    trust = trust_hint(record)
    without = "; predict and export --check-images FILES do not need it" if what == "dataset" else ""
    return UsageError(
        f"the checkpoint's {what} is your own code ({name} from {where}); cnnkit never imports code "
        f"named inside a checkpoint or run folder. If you trust it, pass --trust-code {trust} "
        f"(Python: trust_code=[{trust!r}], or set {ENV_VAR}){without}"
    )


def _import(source: str) -> ModuleType:
    """Import a ``.py`` file (under a private module name) or a module by name."""
    if source.endswith(".py"):
        return _import_file(Path(source).expanduser())
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as err:
        if err.name and (source == err.name or source.startswith(err.name + ".")):
            raise UsageError(f"cannot import module {source!r} ({err}); install it or add its folder to "
                             "PYTHONPATH, or name the file instead: path/to/file.py:NAME") from None  # fmt: skip
        raise _import_error(source, err) from err
    except Exception as err:
        raise _import_error(source, err) from err


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise UsageError(f"code file not found: {path}")
    path = path.resolve()
    name = f"_cnnkit_user_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the file imports its neighbours, as a script would
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise _import_error(str(path), err) from err
    return module


def _import_error(source: str, err: BaseException) -> CnnkitError:
    return CnnkitError(f"importing {source} failed: {describe_exception(err)}")


def describe_exception(err: BaseException) -> str:
    """``TypeError: message (file.py, line 12)``: the innermost frame outside cnnkit."""
    where = ""
    if isinstance(err, SyntaxError) and err.filename:
        where = f" ({Path(err.filename).name}, line {err.lineno})"
    else:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if "cnnkit" not in Path(f.filename).parts
                  and "importlib" not in f.filename]  # fmt: skip
        if frames:
            where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})"
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message}{where}"


def attribute(module: ModuleType, attr: str, source: str) -> Any:
    """``module.attr`` (dots reach nested attributes).

    Raises:
        UsageError: no such attribute; the message lists the classes and functions defined there.
    """
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            defined = sorted(
                n for n, v in vars(module).items()
                if not n.startswith("_")
                and (inspect.isclass(v) or inspect.isfunction(v))
                and v.__module__ == module.__name__
            )
            raise UsageError(f"{source} has no {attr!r}; it defines: {', '.join(defined) or 'no classes or functions'}")
        obj = getattr(obj, part)
    return obj


# ----------------------------------------------------------------------------- records


def _record_of(ref: CodeRef) -> dict[str, Any]:
    if ref.kind == "file":
        return {"ref": ref.text, "kind": "file", "path": ref.target, "attr": ref.attr}
    return {"ref": ref.text, "kind": "module", "module": ref.target, "attr": ref.attr}


def record(text: str, reserved: Iterable[str] = ()) -> dict[str, Any] | None:
    """What a checkpoint keeps about the code ``text`` names (plain values only).

    ``{"ref", "kind", "attr", "path", "sha256", "module"}``: the reference as written, the
    file's absolute path and SHA-256 (for a module: its name and file). None when
    ``text`` is not a reference.
    """
    ref = parse_ref(text, reserved)
    if ref is None:
        return None
    rec = _record_of(ref)
    # the file actually imported (a trusted copy, a resumed run's), else where the reference points
    owner = sys.modules.get(getattr(_BOUND.get(text), "__module__", None) or "") or sys.modules.get(ref.target)
    imported = getattr(owner, "__file__", None) if owner is not None else None
    if imported:
        path: Path | None = Path(imported).resolve()
    else:
        path = Path(ref.target).expanduser().resolve() if ref.kind == "file" else None
    rec["path"] = str(path) if path else None
    rec["sha256"] = _sha256(path) if path is not None and path.is_file() else None
    return rec


def record_registered(name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    """The record of a model registered with ``register_model`` by your own module."""
    target = getattr(fn, "func", fn)  # functools.partial
    module = getattr(target, "__module__", None)
    try:
        file = inspect.getsourcefile(target)
    except TypeError:
        file = None
    path = Path(file).resolve() if file else None
    return {"ref": name, "kind": "registered", "module": module, "attr": getattr(target, "__qualname__", None),
            "path": str(path) if path else None,
            "sha256": _sha256(path) if path and path.is_file() else None}  # fmt: skip


def is_user_code(fn: Any) -> bool:
    """Whether ``fn`` (a builder) was defined outside cnnkit."""
    module = getattr(getattr(fn, "func", fn), "__module__", "") or ""
    return not (module == "cnnkit" or module.startswith("cnnkit."))


def describe_record(record: dict[str, Any]) -> str:
    """One line for the run's log: where the code came from."""
    where = record.get("path") or record.get("module")
    digest = f", sha256 {record['sha256'][:12]}" if record.get("sha256") else ""
    return f"{record.get('attr')} from {where}{digest}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- calling


def call(fn: Callable[..., Any], args: dict[str, Any], *, name: str, supplied: Iterable[str], flag: str) -> Any:
    """``fn(**args)`` after checking the arguments against ``fn``'s signature.

    Args:
        fn: a class or function of the user's.
        args: keyword arguments (those cnnkit supplies and the user's own).
        name: how the user named it (``my_models.py:MyModel``), for messages.
        supplied: argument names cnnkit fills in itself (e.g. ``num_classes``).
        flag: where the user sets the others (``--model-kwargs``).

    Raises:
        UsageError: a required argument is missing or an argument is not accepted; the
            message shows the signature and what cnnkit supplies.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: call and see
        return fn(**args)
    try:
        signature.bind(**args)
    except TypeError as err:
        shown = f"{getattr(fn, '__name__', name)}{_plain_signature(signature)}"
        raise UsageError(
            f"cannot build {name}: {err}. {shown} is what it expects; cnnkit supplies "
            f"{', '.join(supplied)} where the signature names them; give the others with {flag} KEY=VALUE"
        ) from None
    return fn(**args)


def _plain_signature(signature: inspect.Signature) -> str:
    """``(num_classes=10, width, *, depth=2)`` without annotations (one short line)."""
    parts, star = [], False
    for param in signature.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            parts.append(f"*{param.name}")
            star = True
            continue
        if param.kind is param.VAR_KEYWORD:
            parts.append(f"**{param.name}")
            continue
        if param.kind is param.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(param.name if param.default is param.empty else f"{param.name}={param.default!r}")
    return f"({', '.join(parts)})"


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
