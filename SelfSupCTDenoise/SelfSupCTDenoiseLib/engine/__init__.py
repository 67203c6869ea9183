"""The denoising run: configuration, model bundles, networks, noise level, pseudo-noise, adaptation,
inference, the run itself, pre-training and progress. Imports nothing else of this package but
`errors` (and `__version__`), and never Slicer, Qt or VTK; modules that need torch import it themselves."""
