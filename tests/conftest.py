"""The plugin's own tests: pytester for in-process pytest runs; tiny models importable."""

pytest_plugins = ["pytester"]
