"""Output paths, checked before the work whose results they will hold.

An evaluation or a training run that ends in a traceback at its very end, because ``--output`` names a folder or a
place where nothing can be created, loses that work; a report that overwrites the file it was pointed at loses
that file. These checks create nothing that stays: writability is probed with a temporary file that is removed at
once (``os.access`` is no help, since root passes it everywhere).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from thinktuning.errors import OutputPathError


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a relative path ends at ``.``)."""
    return next((p for p in (path, *path.parents) if p.exists()), Path("."))


def _cannot_create_in(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (the OS's words), or None when a probe file could be."""
    try:
        fd, name = tempfile.mkstemp(prefix=".thinktuning-probe-", dir=folder)
    except OSError as err:
        return err.strerror or str(err)
    os.close(fd)
    os.unlink(name)
    return None


def _check_creatable(path: Path, what: str, fix: str) -> None:
    """Raise unless ``path`` (which does not exist) could be created with its missing parent folders."""
    base = _first_existing(path.parent)
    if not base.is_dir():
        raise OutputPathError(f"{what} cannot be created: {base} is a file, not a folder. {fix}")
    why = _cannot_create_in(base)
    if why is not None:
        raise OutputPathError(f"{what} cannot be created: nothing can be written in {base} ({why}). {fix}")


def check_output_file(path: str | Path, flag: str, example_name: str, *, default: bool = False) -> Path:
    """``path`` as a Path if a file can be written there; OutputPathError (naming ``flag``) otherwise.

    ``example_name`` is the file name the message suggests when ``path`` is a folder (``--output runs/x`` where
    ``runs/x/report.html`` was meant). ``default``: the path was not given but derived (a run folder's results
    file), so the fix is to give ``flag``, not to choose it again."""
    out = Path(path)
    what = f"the default output {out} (no {flag} given)" if default else f"{flag} {out}"
    fix = f"Give {flag} FILE somewhere else" if default else f"Choose another {flag}"
    if out.is_dir():
        hint = (f"remove that folder, or give {flag} FILE" if default
                else f"give a file path, e.g. {flag} {out / example_name}")
        raise OutputPathError(f"{what} is a folder; {hint}")
    if not out.exists():
        _check_creatable(out, what, fix)
        return out
    why = _cannot_create_in(out.parent)
    if why is None:
        try:
            with out.open("ab"):  # appends nothing: only asks whether the file may be written
                pass
        except OSError as err:
            why = err.strerror or str(err)
    if why is not None:
        raise OutputPathError(f"{what} cannot be written ({why}). {fix}")
    return out


def check_output_dir(path: str | Path, flag: str) -> Path:
    """``path`` as a Path if it is a folder or could be created as one; OutputPathError otherwise. An existing
    file is left to the caller, which knows what that path was meant to hold."""
    out = Path(path)
    if not out.exists():
        _check_creatable(out, f"{flag} {out}", f"Choose another {flag}")
    elif out.is_dir() and (why := _cannot_create_in(out)) is not None:
        raise OutputPathError(f"{flag} {out}: nothing can be written in it ({why}). Choose another {flag}")
    return out
