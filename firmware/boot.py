# Runs first on every reset. Kept minimal: a mistake here can brick the board's REPL.
import gc

gc.collect()
