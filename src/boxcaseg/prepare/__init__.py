"""Preparation of public datasets (DUTS-Single, augmented VOC)."""
