"""Evaluation of students against teachers: fidelity, 3D consistency, FID/KID."""
