"""DVC stage entry points: each `python -m qualitune.stages.X` reads its params section and calls the library."""
