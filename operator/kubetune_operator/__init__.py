"""The kubetune operator: FineTuneJob -> worker pods, status, gang restarts (see handlers.py)."""
