"""Slicer-side logic of the SelfSupCTDenoise module that needs no Slicer application.

- `nodes`: input checks, temporary files, output nodes with the input's exact geometry, display, layout
- `runner`: the engine's worker in a child process, progress parsing, cancel (process tree), states
- `job`: one run from input node to output nodes; the scene changes only when a run completes
- `settings`: panel values to engine config, bundles, GPU detection, time estimates
- `status`: progress events to a progress bar, a status line and measured phase timings
- `dependencies`: what the worker needs, checked from package metadata; installed on first use

Importing this package imports neither torch nor the Slicer application.
"""
