"""Package data files (class maps, dictionary, model configs, bundled weights)."""
