"""Data curation: unstructured text-video pairs → interactive dataset (DESIGN.md §3)."""
