"""The systems users would pick instead, measured in the same run (extra ``bench``)."""
