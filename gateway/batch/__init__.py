"""Offline batch scoring (`gateway batch`): files of records through a model of the repository."""
