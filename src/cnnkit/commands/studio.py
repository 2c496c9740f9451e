"""``cnnkit studio [PROJECT_DIR]``: the studio page of a project folder, on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnnkit.errors import UsageError

STOP_GRACE_S = 30.0  # Ctrl-C waits this long for a training job to save its last step


def main(args: Any) -> None:
    """Open (or create) the project, serve its page until Ctrl-C.

    The address and the ``--allow-import`` folders are checked first, so a bad ``--port``
    leaves no project folder behind. A project written by a newer cnnkit is refused before
    anything is served (:meth:`cnnkit.studio.project.Project.open` raises a CnnkitError: exit code 1).
    """
    from cnnkit.serve import wait
    from cnnkit.serve.app import check_address, launch
    from cnnkit.studio import jobs
    from cnnkit.studio.app import MAX_UPLOAD, build_studio
    from cnnkit.studio.project import Project
    from cnnkit.studio.views import reports_folder

    check_address(args.host, args.port)
    roots = import_roots(args.host, args.allow_import)
    project = Project.open(args.project)
    page = build_studio(project, import_roots=roots)
    url = launch(page, host=args.host, port=args.port, max_file_size=MAX_UPLOAD, allowed_paths=[reports_folder()])
    print(f"cnnkit studio: {project.root} on {url}  (Ctrl-C to stop)", flush=True)
    if roots is not None:
        allowed = ", ".join(str(r) for r in roots) or "none (registered datasets only; --allow-import DIR adds one)"
        print(f"folders the page may import: {allowed}", flush=True)

    def stop_training() -> None:
        # a job left running would die with the process, its run folder saying "running"
        job = jobs.current_job(project)
        if job is not None and job.running:
            print(f"stopping the training job {job.run_name} (it can be continued)", flush=True)
            job.stop()
            job.wait(STOP_GRACE_S)

    wait(page, before_close=stop_training)


def import_roots(host: str, allowed: list[str]) -> tuple[Path, ...] | None:
    """The folders the page may import from: the ``--allow-import`` folders (resolved) when
    given; else None (any folder) on the loopback address, whose clients are this machine's
    users, and none on any other address (anyone on the network could read the server's files).

    Raises:
        UsageError: an ``--allow-import`` that is not a folder.
    """
    from cnnkit.serve.app import is_loopback

    roots = []
    for folder in allowed:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise UsageError(f"--allow-import {folder}: not a folder")
        roots.append(Path(os.path.realpath(path)))
    if roots:
        return tuple(roots)
    return None if is_loopback(host) else ()
