"""The tracker service: which pixels of a target view are already observed in anchor views."""
