"""A static HTML report of labeled masks: summary tables, plots and a worst-first gallery."""
