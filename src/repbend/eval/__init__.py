"""Evaluation: benchmark rows -> attack -> generate -> judge -> metrics -> report."""
