"""Data for experiments: real CT from the package registry, low-dose simulation, the simulated
dataset and demo sample, phantoms. Never needed to denoise."""
