"""Lockers: one writer per upload, in one process (memory), across the processes of one
host (file) or across hosts (redis). Each implements `formforge.core.locker.Locker` on the
take-over algorithm of `base.py`."""
