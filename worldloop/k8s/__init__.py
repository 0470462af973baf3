"""Kubernetes deployment of the worldloop platform: render, validate, apply and report status."""
