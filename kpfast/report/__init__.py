"""What kpfast shows and writes for people: progress bars, Markdown tables, image files, picture
grids, plots and the throughput benchmark.

Each module imports its own optional dependency (``kpfast[cli]``: Pillow, pypng, tqdm;
``kpfast[experiments]``: matplotlib) when it is imported, so this package itself costs nothing.
Atomic writes live in :mod:`kpfast.atomic` (key files need them too).
"""
