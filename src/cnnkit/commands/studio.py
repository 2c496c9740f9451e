"""``cnnkit studio [PROJECT_DIR]``: the studio page of a project folder, on 127.0.0.1."""

from __future__ import annotations

from typing import Any

STOP_GRACE_S = 30.0  # Ctrl-C waits this long for a training job to save its last step


def main(args: Any) -> None:
    """Open (or create) the project, serve its page until Ctrl-C.

    A project written by a newer cnnkit is refused here, before anything is served
    (:meth:`cnnkit.studio.project.Project.open` raises a CnnkitError: exit code 1).
    """
    from cnnkit.serve import wait
    from cnnkit.serve.app import launch
    from cnnkit.studio import jobs
    from cnnkit.studio.app import MAX_UPLOAD, build_studio
    from cnnkit.studio.project import Project

    project = Project.open(args.project)
    page = build_studio(project)
    url = launch(page, host=args.host, port=args.port, max_file_size=MAX_UPLOAD, allowed_paths=[project.root])
    print(f"cnnkit studio: {project.root} on {url}  (Ctrl-C to stop)", flush=True)

    def stop_training() -> None:
        # a job left running would die with the process, its run folder saying "running"
        job = jobs.current_job(project)
        if job is not None and job.running:
            print(f"stopping the training job {job.run_name} (it can be continued)", flush=True)
            job.stop()
            job.wait(STOP_GRACE_S)

    wait(page, before_close=stop_training)
