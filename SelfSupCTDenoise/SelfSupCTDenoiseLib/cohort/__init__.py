"""Cohorts: many volumes denoised as one job each on a Ray cluster (or a local Ray), then one QC page.

- `inputs`: which volumes (folders, list files, CSV manifests with per-volume options) and where each
  output goes (the serial batch's names and resume rule, `commands/denoise.py`);
- `task`: what a worker does for one volume (denoise into a private folder, move the finished set
  into place, QC); importable and runnable without Ray;
- `qc`: the QC numbers of one output (the engine's trust measures, trust.py) and its image strips;
- `events`: the JSON-lines event log and the terminal progress of the whole cohort;
- `scheduler`: Ray: starting or joining a cluster safely, one task per volume, retries, Ctrl-C.
- `reaper`: a local Ray's processes and folder end with the cohort, however it ends.

The HTML page is `report.py`; the command is `commands/cohort.py`. Ray is an optional extra
(`pip install "selfsupctdenoise[cohort]"`): nothing here imports it until a cohort is run on it.
"""
