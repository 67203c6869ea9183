"""Files: reading and checking CT volumes and DICOM series, atomic output sets, DICOM output, the
provenance fields and sidecars, and `denoise_file` (one file in, files out). Builds on `engine` only."""
