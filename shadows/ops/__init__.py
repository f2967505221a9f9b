"""Whole-file operations: conversion, statistics, preprocessing, repacking, column indexes, exports.

Each module is one operation that reads through :mod:`shadows.stream.shadow` and writes a new file (or an element of the
same file) in bounded memory: :mod:`~shadows.ops.convert`, :mod:`~shadows.ops.stats`, :mod:`~shadows.ops.pp`,
:mod:`~shadows.ops.repack`, :mod:`~shadows.ops.column_index`, :mod:`~shadows.ops.export`.

May import: :mod:`shadows.mudata.shadow` and every layer below it.
"""
