"""Targets turn a checkpoint's weights into destinations for the executor.

``numpy`` ships with the core; ``keras`` and ``torch`` import their framework
only when used.
"""
