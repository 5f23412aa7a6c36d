"""Checking predictions: the fake-tensor dry run (oracle) and, later, the real verification run.

Only the modules here import torch, and only when they run.
"""
