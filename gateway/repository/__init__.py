"""The model repository: discovery, configuration, load, warm-up, unload."""
