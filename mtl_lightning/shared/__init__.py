"""Values both the data pipeline and the tasks use: the ignore label, the dense-map
tv_tensors and the data error. ``data/`` imports ``tasks/`` (a reader asks a task type how
to decode its files), so what a task needs from the data side lives here, below both, and
neither package imports the other lazily."""
