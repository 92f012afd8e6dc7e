"""TFDS dataset builders for data sets that install from the OS package manager."""
