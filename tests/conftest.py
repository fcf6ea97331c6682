import os

# Stored notebook outputs and test logs stay free of progress bars.
os.environ.setdefault("DIFFBOOK_PROGRESS", "0")
