"""The evaluate stage's pieces: test-set metrics, plots, report inputs and the HTML report."""
