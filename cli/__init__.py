"""The `ctglip` command line: thin click wrappers over the library."""
