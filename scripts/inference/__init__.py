"""Inference's own steps: the label map on the input's grid at the memory of one class."""
