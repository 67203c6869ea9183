"""Trust measures of a result: regions, HU shift, method noise, NPS, image metrics and the trust
report. Builds on `engine` only (numpy, scipy, scikit-image; no torch)."""
